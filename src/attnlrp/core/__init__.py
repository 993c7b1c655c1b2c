"""The math of the rules, knowing no model: autograd rules (``rules``) and layer rules (``layer_rules``)."""
