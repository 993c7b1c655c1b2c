"""Self-contained HTML heatmaps: no network, no CDN; data and script are inlined.

Each view is one ``<div class="attnlrp-view">`` that finds its own elements from its own script and names its
own radio groups, so any number of views work side by side on one page (a notebook's outputs included): no
element ids, no global names.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from .palette import gradient_css, javascript

_STYLE = """
.attnlrp-view{font:15px/1.6 system-ui,-apple-system,Segoe UI,sans-serif;color:#222;max-width:1100px;margin:8px 0}
.attnlrp-view h1{font-size:18px;margin:0 0 4px} .attnlrp-view .meta{color:#666;font-size:13px;margin-bottom:12px}
.attnlrp-view .controls{margin:10px 0;font-size:13px} .attnlrp-view .controls label{margin-right:14px}
.attnlrp-view .panel{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:10px 0}
.attnlrp-view .panel h2{font-size:14px;margin:0 0 6px;color:#444}
.attnlrp-view .text{white-space:pre-wrap;word-break:break-word}
.attnlrp-view .tok{border-radius:3px;padding:1px 0;cursor:default;color:#000}
.attnlrp-view .gen{cursor:pointer;outline:1px dashed #999} .attnlrp-view .gen.sel{outline:2px solid #000}
.attnlrp-view .self{outline:1px dashed #888}
.attnlrp-view .target{outline:2px solid #000;background:#ffe9a8}
.attnlrp-view .tip{position:fixed;pointer-events:none;background:#222;color:#fff;font-size:12px;padding:3px 6px;
  border-radius:4px;display:none;z-index:10}
.attnlrp-view .legend{display:flex;align-items:center;gap:6px;font-size:12px;color:#555;margin-top:6px}
.attnlrp-view .bar{width:180px;height:10px;border:1px solid #ccc;background:GRADIENT}
.attnlrp-view table.matrix{border-collapse:collapse;font-size:11px}
.attnlrp-view table.matrix td{width:14px;height:14px;padding:0}
.attnlrp-view table.matrix th{font-weight:normal;text-align:right;padding-right:4px;white-space:pre}
.attnlrp-view .beside{display:flex;gap:14px;align-items:flex-start}
.attnlrp-view .units{min-width:250px;max-width:380px;font-size:12px} .attnlrp-view .units .unitrow{white-space:nowrap}
.attnlrp-view .units .bar{display:inline-block;height:9px;width:auto;border:0;margin-right:4px;vertical-align:middle}
.attnlrp-view .units .r{color:#555} .attnlrp-view .units .lab{color:#333} .attnlrp-view .units .rest{color:#777}
.attnlrp-view figure{margin:0;font-size:12px;color:#555;text-align:center}
.attnlrp-view figure img{display:block;width:224px;image-rendering:pixelated}
"""

_SCRIPT = r"""
const view = document.currentScript.closest('.attnlrp-view');
const D = JSON.parse(view.querySelector('script.attnlrp-data').textContent);
const main = view.querySelector('.main'), tip = view.querySelector('.tip');
const group = 'attnlrp-' + Math.random().toString(36).slice(2);
let unit = 'token', scope = 'local', step = 0;
function vis(t){ return t.replace(/\n/g,'\u21b5\n'); }
function maxabs(a){ let m=0; for(const v of a) m=Math.max(m,Math.abs(v)); return m||1; }
function span(text, score, scale, cls){ const s=document.createElement('span'); s.className='tok '+(cls||'');
  s.textContent=vis(text); s.style.background=color(score/scale); s.dataset.score=score;
  s.onmousemove=e=>{tip.style.display='block'; tip.style.left=(e.clientX+12)+'px'; tip.style.top=(e.clientY+12)+'px';
    tip.textContent=`${JSON.stringify(text)}  R = ${(+score).toPrecision(4)}`};
  s.onmouseleave=()=>tip.style.display='none'; return s; }
function legend(scale){ const d=document.createElement('div'); d.className='legend';
  d.innerHTML=`<span>${(-scale).toPrecision(3)}</span><span class="bar"></span><span>+${scale.toPrecision(3)}</span>`; return d; }
function view_of(item){ return unit==='word' ? item.words : item.tokens; }
function beside(image, caption, text){ if(!image) return text;
  const row=document.createElement('div'); row.className='beside'; const f=document.createElement('figure');
  const img=document.createElement('img'); img.src=image; img.alt='image relevance'; f.appendChild(img);
  const c=document.createElement('figcaption'); c.textContent=caption; f.appendChild(c);
  row.appendChild(f); row.appendChild(text); return row; }
function withUnits(sites, text){ if(!sites||!sites.length) return text;
  const row=document.createElement('div'); row.className='beside'; row.appendChild(text);
  const u=document.createElement('div'); u.className='units';
  for(const s of sites){ const scale=Math.max(...s.top.map(x=>Math.abs(x.relevance)),1e-30);
    const extra=s.error!==undefined?` \u00b7 error ${s.error.toPrecision(3)} \u00b7 bias ${s.bias.toPrecision(3)}`:'';
    u.insertAdjacentHTML('beforeend', `<h2></h2><div class="meta">\u03a3R = ${s.total.toPrecision(4)}${extra}</div>`);
    u.querySelector('h2:last-of-type').textContent=`${s.site} (${s.kind})`;
    for(const x of s.top){ const d=document.createElement('div'); d.className='unitrow';
      d.innerHTML=`<span class="bar" style="width:${Math.round(60*Math.abs(x.relevance)/scale)}px;background:${color(x.relevance/scale)}"></span><b>${x.unit}</b> <span class="r">${x.relevance.toPrecision(3)}</span> `;
      const l=document.createElement('span'); l.className='lab'; l.textContent=x.label?`${x.label}${x.purity!==null?` (${x.purity.toFixed(2)})`:''}`:'';
      d.appendChild(l); u.appendChild(d); }
    u.insertAdjacentHTML('beforeend', `<div class="unitrow rest">other units: ${s.rest.toPrecision(3)}</div>`); }
  row.appendChild(u); return row; }
function context(v){ return v.context==null ? v.scores : v.scores.slice(0, v.context); }
function renderSet(){
  main.innerHTML='';
  const globalScale=Math.max(...D.items.map(it=>maxabs(context(view_of(it)))));
  for(const it of D.items){ const v=view_of(it); const scale=scope==='global'?globalScale:maxabs(context(v));
    const p=document.createElement('div'); p.className='panel';
    const own=v.context==null?'':`; the answer's own tokens (outlined, on the context's scale): \u03a3R = ${v.scores.slice(v.context).reduce((a,b)=>a+b,0).toPrecision(4)}`;
    p.innerHTML=`<h2>${it.method} \u2014 target ${JSON.stringify(it.target)} (y = ${it.value.toPrecision(4)}, \u03a3R = ${it.total.toPrecision(4)}${own})</h2>`;
    const t=document.createElement('div'); t.className='text';
    v.text.forEach((x,i)=>t.appendChild(span(x,v.scores[i],scale,v.context!=null&&i>=v.context?'self':'')));
    p.appendChild(beside(it.image&&it.image.src, it.image?`image \u03a3R = ${it.image.total.toPrecision(4)}`:'', withUnits(it.units, t)));
    p.appendChild(legend(scale)); main.appendChild(p); }
}
function renderGen(){
  main.innerHTML='';
  const v=view_of(D); const rows=v.matrix; const P=v.prompt_length; const n=rows.length;
  const scale=scope==='global'?Math.max(...rows.map(maxabs)):maxabs(rows[step]);
  const p=document.createElement('div'); p.className='panel';
  p.innerHTML=`<h2>relevance for generated token ${step}: ${JSON.stringify(D.generated[step])} (click a generated token)</h2>`;
  const t=document.createElement('div'); t.className='text heat';
  v.text.forEach((x,i)=>{ const g=i-P; const isGen=g>=0&&g<n;
    const s=span(x, i<P+step?rows[step][i]:0, scale, isGen?'gen'+(g===step?' sel':''):'');
    if(i===P+step) s.classList.add('target');
    if(isGen) s.onclick=()=>{ step=g; renderGen(); };
    t.appendChild(s); });
  p.appendChild(beside(D.images&&D.images[step].src, D.images?`image \u03a3R = ${D.images[step].total.toPrecision(4)}`:'', t));
  p.appendChild(legend(scale)); main.appendChild(p);
  const m=document.createElement('div'); m.className='panel'; m.innerHTML='<h2>all steps: generated tokens \u00d7 tokens</h2>';
  const tb=document.createElement('table'); tb.className='matrix';
  const gscale=Math.max(...rows.map(maxabs));
  rows.forEach((r,g)=>{ const tr=document.createElement('tr'); const th=document.createElement('th');
    th.textContent=JSON.stringify(D.generated[g]); tr.appendChild(th);
    r.forEach((x,i)=>{ const td=document.createElement('td'); const w=scope==='global'?x/gscale:x/maxabs(r);
      td.style.background=color(w); td.title=`${JSON.stringify(v.text[i])}: ${x.toPrecision(4)}`; tr.appendChild(td); });
    tr.onclick=()=>{ step=g; renderGen(); }; tb.appendChild(tr); });
  m.appendChild(tb); main.appendChild(m);
}
function render(){ (D.kind==='generation'?renderGen:renderSet)(); }
view.querySelectorAll('input[data-control]').forEach(r=>{ r.name = group + '-' + r.dataset.control;
  r.checked = r.hasAttribute('checked');
  r.onchange=e=>{ if(r.dataset.control==='unit') unit=e.target.value; else scope=e.target.value; render(); }; });
render();
"""


def style() -> str:
    """The views' CSS, with the palette's legend gradient (other views, such as feature cards, build on it)."""
    return _STYLE.replace("GRADIENT", gradient_css())


def _json_ready(value):
    """``value`` with NaN and infinities as null: JSON has no such numbers, and a page whose data has them is blank."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def view(data: dict, title: str, meta: str) -> str:
    """One self-contained view (a ``<div>`` with its style, data and script) of an explanation set or a generation."""
    scope_label = "per target" if data["kind"] == "generation" else "per method"
    # no "<" at all inside the script element: "</script" would end it, "<!--<script" would swallow the page
    payload = json.dumps(_json_ready(data), ensure_ascii=False).replace("<", "\\u003c")
    style = _STYLE.replace("GRADIENT", gradient_css())
    return f"""<div class="attnlrp-view"><style>{style}</style>
<h1>{html.escape(title)}</h1><div class="meta">{html.escape(meta)}</div>
<div class="controls">
<label><input type="radio" data-control="unit" value="token" checked> tokens</label>
<label><input type="radio" data-control="unit" value="word"> words</label>
<label><input type="radio" data-control="scope" value="local" checked> normalise {scope_label}</label>
<label><input type="radio" data-control="scope" value="global"> normalise globally</label>
</div>
<div class="main"></div><div class="tip"></div>
<script class="attnlrp-data" type="application/json">{payload}</script>
<script>(function(){{
{javascript()}{_SCRIPT}}})();</script></div>"""


def png_uri(png: bytes) -> str:
    """A PNG as a data URI, to inline it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_view(png: bytes, title: str, meta: str) -> str:
    """One view of an image explanation: the relevance drawn as a PNG, inlined."""
    return f"""<div class="attnlrp-view"><style>{_STYLE.replace("GRADIENT", gradient_css())}</style>
<h1>{html.escape(title)}</h1><div class="meta">{html.escape(meta)}</div>
<img alt="{html.escape(title)}" src="{png_uri(png)}"></div>"""


def page(fragment: str, title: str) -> str:
    """A complete HTML document around one view (or several, concatenated)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{margin:24px}}</style></head>
<body>{fragment}</body></html>
"""


def write(path: str | Path, document: str) -> Path:
    """Write the document, creating its folder where it is missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
