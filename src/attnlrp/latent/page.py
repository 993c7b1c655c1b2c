"""The HTML of feature cards: one self-contained, searchable view of any number of cards.

The view is an ``attnlrp-view`` fragment like ``render.html``'s (its style, the palette's colours, no element
ids, no network): a search box filters the list of units by site, unit, kind or label, and a click shows the
unit's card. A single card is shown at once, without the list. Token texts are stored once per context.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..render.html import page, style, write
from ..render.palette import javascript

_STYLE = """
.attnlrp-view input.search{width:340px;padding:4px 6px;font-size:14px}
.attnlrp-view .count{color:#666;font-size:12px;margin-left:8px}
.attnlrp-view .listing{max-height:300px;overflow:auto;border:1px solid #ddd;border-radius:6px;margin:8px 0}
.attnlrp-view table.units{border-collapse:collapse;font-size:13px;width:100%}
.attnlrp-view table.units td,.attnlrp-view table.units th{padding:2px 8px;border-bottom:1px solid #eee;white-space:nowrap;text-align:left}
.attnlrp-view table.units tr.unit{cursor:pointer} .attnlrp-view table.units tr.unit:hover{background:#f4f4f4}
.attnlrp-view table.units tr.sel{background:#ffe9a8}
.attnlrp-view .ctx{margin:2px 0;padding:2px 0;border-bottom:1px dotted #e4e4e4}
.attnlrp-view .score{display:inline-block;min-width:70px;color:#666;font-size:12px}
.attnlrp-view .side{display:flex;gap:16px;flex-wrap:wrap} .attnlrp-view .side>div{flex:1;min-width:260px}
.attnlrp-view .outs span{display:inline-block;margin:1px 3px;padding:0 3px;border-radius:3px}
.attnlrp-view .note{color:#8a5300;font-size:12px}
"""

_SCRIPT = r"""
const view = document.currentScript.closest('.attnlrp-view');
const D = JSON.parse(view.querySelector('script.attnlrp-data').textContent);
const search = view.querySelector('input.search'), count = view.querySelector('.count');
const rows = view.querySelector('table.units'), card = view.querySelector('.card'), tip = view.querySelector('.tip');
const LIMIT = 300;
function esc(t){ const d=document.createElement('span'); d.textContent=t; return d.innerHTML; }
function vis(t){ return t.replace(/\n/g,'\u21b5\n'); }
function maxabs(a){ let m=0; for(const v of a) m=Math.max(m,Math.abs(v)); return m||1; }
function fmt(v){ return v===null||v===undefined ? '\u2014' : (+v).toPrecision(3); }
function tokens(list, values, scale, label){
  const t=document.createElement('span'); t.className='text';
  list.forEach((x,i)=>{ const s=document.createElement('span'); s.className='tok'; s.textContent=vis(x);
    const v=values[i]||0; s.style.background=color(v/scale); s.dataset.score=v;
    s.onmousemove=e=>{tip.style.display='block'; tip.style.left=(e.clientX+12)+'px'; tip.style.top=(e.clientY+12)+'px';
      tip.textContent=`${JSON.stringify(x)}  ${label} = ${(+v).toPrecision(4)}`};
    s.onmouseleave=()=>tip.style.display='none'; t.appendChild(s); });
  return t; }
function contexts(title, list, key, label){
  const p=document.createElement('div'); p.className='panel'; p.innerHTML=`<h2>${title}</h2>`;
  if(!list.length){ p.innerHTML+='<div class="note">none</div>'; return p; }
  const scale=Math.max(...list.map(c=>maxabs(c[key]||[])));
  for(const c of list){ const d=document.createElement('div'); d.className='ctx';
    d.innerHTML=`<span class="score">${fmt(c.score)}</span>`;
    d.appendChild(tokens(D.contexts[c.context]||c.tokens, c[key], scale, label));
    if(c.topic) d.insertAdjacentHTML('beforeend', ` <span class="score">[${esc(c.topic)}]</span>`);
    p.appendChild(d); }
  return p; }
function histogram(h){
  const n=h.counts.length, top=Math.max(...h.counts,1), w=6, H=60;
  let bars=''; h.counts.forEach((c,i)=>{ const y=c? Math.max(1,Math.round(H*Math.log1p(c)/Math.log1p(top))):0;
    const lo=i?h.edges[i-1]:-Infinity, hi=i<h.edges.length?h.edges[i]:Infinity;
    bars+=`<rect x="${i*w}" y="${H-y}" width="${w-1}" height="${y}" fill="${color(i<n/2?-0.7:0.7)}"><title>(${lo.toPrecision(2)}, ${hi.toPrecision(2)}]: ${c}</title></rect>`; });
  return `<svg class="hist" width="${n*w}" height="${H+14}"><line x1="${n*w/2}" x2="${n*w/2}" y1="0" y2="${H}" stroke="#999"/>${bars}<text x="0" y="${H+12}" font-size="10">\u2212</text><text x="${n*w-8}" y="${H+12}" font-size="10">+</text></svg>`; }
function outs(list){ if(!list.length) return '<div class="note">\u2014</div>';
  const scale=maxabs(list.map(x=>x[1]));
  return '<div class="outs">'+list.map(x=>`<span style="background:${color(x[1]/scale)}" title="${fmt(x[1])}">${esc(vis(x[0]))}</span>`).join('')+'</div>'; }
function show(c){
  card.innerHTML='';
  const s=c.stats||{};
  const head=document.createElement('div'); head.className='panel';
  head.innerHTML=`<h2>${esc(c.site)} : ${c.unit} (${esc(c.site_kind)}) \u2014 <span class="label">${esc(c.label)}</span></h2>`+
    `<div class="meta">purity ${fmt(c.purity)}${c.chance!==null&&c.chance!==undefined?` (chance ${fmt(c.chance)})`:''} \u00b7 activation mean ${fmt(s.activation_mean)}, max ${fmt(s.activation_max)}, active on ${fmt(100*(s.active_share||0))}% of ${s.tokens} tokens \u00b7 relevance per context mean ${fmt(s.relevance_mean)}, mean |R| ${fmt(s.relevance_abs_mean)}, max ${fmt(s.relevance_max)}</div>`+
    `<div class="side"><div><h2>activation histogram (symmetric log bins)</h2>${histogram(c.histogram)}</div>`+
    `<div><h2>promotes</h2>${outs(c.promoted)}<h2>suppresses</h2>${outs(c.suppressed)}</div></div>`+
    (c.notes||[]).map(n=>`<div class="note">${esc(n)}</div>`).join('');
  card.appendChild(head);
  card.appendChild(contexts('top contexts by activation (activation per token)', c.top_activation, 'activations', 'a'));
  card.appendChild(contexts('top contexts by relevance for the prediction (activation per token)', c.top_relevance, 'activations', 'a'));
  if(c.conditional && c.conditional.length){
    const p=document.createElement('div'); p.className='panel';
    p.innerHTML='<h2>conditional heatmaps: input relevance through this unit only</h2>';
    for(const h of c.conditional){ const d=document.createElement('div'); d.className='ctx';
      d.innerHTML=`<span class="score">\u2192 ${esc(JSON.stringify(h.target))} R<sub>unit</sub> ${fmt(h.unit_relevance)}</span>`;
      d.appendChild(tokens(D.contexts[h.context]||h.tokens, h.scores, maxabs(h.scores), 'R')); p.appendChild(d); }
    card.appendChild(p); }
}
function matches(c, words){ const hay=`${c.site}:${c.unit} ${c.site} ${c.unit} ${c.site_kind} ${c.label}`.toLowerCase();
  return words.every(w=>hay.includes(w)); }
function list(){
  const words=search.value.toLowerCase().split(/\s+/).filter(Boolean);
  const found=D.cards.filter(c=>matches(c, words));
  count.textContent=`${found.length} of ${D.cards.length} units`+(found.length>LIMIT?` (first ${LIMIT} listed)`:'');
  rows.innerHTML='<tr><th>site</th><th>unit</th><th>label</th><th>purity</th><th>mean |R| per context</th></tr>';
  found.slice(0,LIMIT).forEach(c=>{ const tr=document.createElement('tr'); tr.className='unit';
    tr.innerHTML=`<td>${esc(c.site)}</td><td>${c.unit}</td><td>${esc(c.label)}</td><td>${fmt(c.purity)}</td><td>${fmt((c.stats||{}).relevance_abs_mean)}</td>`;
    tr.onclick=()=>{ rows.querySelectorAll('tr.sel').forEach(r=>r.classList.remove('sel')); tr.classList.add('sel'); show(c); };
    rows.appendChild(tr); }); }
if(D.cards.length===1){ view.querySelector('.browse').style.display='none'; show(D.cards[0]); }
else { search.oninput=list; list(); }
"""


def _rounded(values: Sequence[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def _compact(cards: Sequence[Any]) -> dict[str, Any]:
    """The view's data: cards with their per-token values rounded, and each context's tokens stored once."""
    table: dict[str, list[str]] = {}
    out = []
    for card in cards:
        data = card.to_dict()
        for key in ("top_activation", "top_relevance", "conditional"):
            entries = []
            for c in data[key]:
                c = dict(c)
                if c.get("context") is not None:
                    table[str(c["context"])] = c.pop("tokens")
                for field in ("activations", "relevance", "scores"):
                    if field in c:
                        c[field] = _rounded(c[field])
                entries.append(c)
            data[key] = entries
        out.append(data)
    return {"cards": out, "contexts": table}


def atlas_view(cards: Sequence[Any], title: str, meta: str) -> str:
    """One view of ``cards`` (FeatureCards): a searchable list with a card panel, or one card alone."""
    payload = json.dumps(_compact(cards), ensure_ascii=False).replace("<", "\\u003c")
    return f"""<div class="attnlrp-view"><style>{style()}{_STYLE}</style>
<h1>{html.escape(title)}</h1><div class="meta">{html.escape(meta)}</div>
<div class="browse"><input class="search" type="search" placeholder="search: site, unit, kind or label"><span class="count"></span>
<div class="listing"><table class="units"></table></div></div>
<div class="card"></div><div class="tip"></div>
<script class="attnlrp-data" type="application/json">{payload}</script>
<script>(function(){{
{javascript()}{_SCRIPT}}})();</script></div>"""


def write_atlas_page(path: str | Path, cards: Sequence[Any], title: str, meta: str) -> Path:
    """Write one self-contained page of ``cards``."""
    return write(path, page(atlas_view(cards, title, meta), title))
