// neuronlib circuit viewer: draws the graph held in the JSON element #graph-data as an SVG.
// It reads the inline JSON (never evaluated as code), builds the SVG with DOM calls and sets text with
// textContent only (no innerHTML), so data strings cannot inject markup. Inlined at save time by
// neuronlib.viewer.render_html; the page's Content-Security-Policy allows exactly this script by its sha256 hash.
(function(){
'use strict';
var SVGNS=document.getElementById('svg').namespaceURI;  // the SVG namespace, without spelling a URL
function el(tag, attrs, parent){
  var e=document.createElementNS(SVGNS, tag);
  if(attrs){ for(var k in attrs){ if(Object.prototype.hasOwnProperty.call(attrs,k)){ e.setAttribute(k, String(attrs[k])); } } }
  if(parent){ parent.appendChild(e); }
  return e;
}
function hel(tag, cls, text, parent){
  var e=document.createElement(tag);
  if(cls){ e.className=cls; }
  if(text!==undefined && text!==null){ e.textContent=String(text); }
  if(parent){ parent.appendChild(e); }
  return e;
}
function fmt(x){
  if(x===0){ return '0'; }
  if(!isFinite(x)){ return String(x); }
  var a=Math.abs(x);
  if(a>=1000 || a<0.001){ return x.toExponential(3); }
  return x.toPrecision(4).replace(/\.?0+$/,'');
}
function showTok(t){
  t=String(t).replace(/\n/g,'\\n').replace(/\t/g,'\\t').replace(/\r/g,'\\r');
  return t.length>16 ? t.slice(0,15)+'\u2026' : t;
}
function r2(v){ return Math.round(v*100)/100; }

function main(){
  var body=document.body;
  var D=JSON.parse(document.getElementById('graph-data').textContent);
  var G=D.graph, L=D.layout, OPT=D.options||{};
  var nodes=G.nodes, edges=G.edges, meta=G.meta;
  var N=nodes.length, E=edges.length;
  var i, j;

  // header
  document.getElementById('title').textContent=meta.title||'Circuit';
  var sub=[];
  if(meta.prompt){ sub.push('Prompt: '+JSON.stringify(String(meta.prompt))); }
  if(meta.metric){ sub.push('Metric: '+meta.metric); }
  sub.push(N+' nodes, '+E+' edges, '+meta.n_layers+' layers');
  document.getElementById('sub').textContent=sub.join('   \u00b7   ');

  var idx={};
  for(i=0;i<N;i++){ idx[nodes[i].id]=i; }
  var inE=[], outE=[];
  for(i=0;i<N;i++){ inE.push([]); outE.push([]); }
  for(j=0;j<E;j++){ outE[idx[edges[j].source]].push(j); inE[idx[edges[j].target]].push(j); }

  var svg=document.getElementById('svg');
  var W=L.width, H=L.height, P=L.plot;
  var sx=1;                                  // horizontal stretch (fills the window width)
  function X(x){ return P[0]+(x-P[0])*sx; }

  // static background: column bands, row grid, labels
  var gBg=el('g',{'class':'bg'},svg);
  var bands=[], grid=[], posLabs=[], tokLabs=[];
  L.columns.forEach(function(c,k){
    if(k%2===0){ bands.push([el('rect',{'class':'colband',y:P[1],height:P[3]-P[1]},gBg), c]); }
  });
  L.rows.forEach(function(r){
    grid.push(el('line',{'class':'grid',x1:P[0],y1:r.y,y2:r.y},gBg));
    var t=el('text',{'class':'rowlab',x:P[0]-8,y:r.y+3.5,'text-anchor':'end'},gBg);
    t.textContent=r.name;
  });
  L.columns.forEach(function(c){
    var t=el('text',{'class':'poslab',y:P[3]+12,'text-anchor':'middle'},gBg);
    t.textContent=String(c.position);
    posLabs.push([t,c]);
    var tk=el('text',{'class':'toklab','text-anchor':'end'},gBg);
    tk.textContent=showTok(c.token);
    var ti=el('title',null,tk); ti.textContent='position '+c.position+': '+JSON.stringify(String(c.token));
    tokLabs.push([tk,c]);
  });

  // edges: weakest first so strong ones are drawn on top
  var maxW=L.max_abs_weight>0?L.max_abs_weight:1;
  var order=[]; for(j=0;j<E;j++){ order.push(j); }
  order.sort(function(a,b){ return Math.abs(edges[a].weight)-Math.abs(edges[b].weight); });
  var gE=el('g',{'class':'edges'},svg);
  var edgeEls=new Array(E);
  order.forEach(function(j){
    var e=edges[j], f=Math.abs(e.weight)/maxW;
    var p=el('path',{'class':'edge',stroke:e.weight>=0?OPT.pos_color:OPT.neg_color,
      'stroke-width':(0.4+3.6*f).toFixed(2),'stroke-opacity':(0.12+0.68*Math.sqrt(f)).toFixed(3)},gE);
    p.setAttribute('data-i', j);
    edgeEls[j]=p;
  });

  // nodes and their labels
  var gN=el('g',{'class':'nodes'},svg);
  var gT=el('g',{'class':'labels'},svg);
  var nodeEls=new Array(N), labelEls=new Array(N), labelW=new Array(N);
  var drawOrder=[];   // ungrouped/embedding/output nodes first, so grouped nodes are drawn on top
  for(i=0;i<N;i++){ if(L.groups[L.nodes[i][3]].special){ drawOrder.push(i); } }
  for(i=0;i<N;i++){ if(!L.groups[L.nodes[i][3]].special){ drawOrder.push(i); } }
  drawOrder.forEach(function(i){
    var n=nodes[i], c=L.nodes[i];
    var circ=el('circle',{'class':'node',cy:c[1],r:c[2],fill:L.groups[c[3]].color},gN);
    if(n.sign){ circ.setAttribute('data-sign', n.sign); }
    circ.setAttribute('data-i', i);
    nodeEls[i]=circ;
    var lt=el('text',{'class':'nlabel',y:c[1]-c[2]-1},gT);
    lt.textContent=n.label;
    labelEls[i]=lt;
  });
  for(i=0;i<N;i++){   // label widths, measured once (estimate if the browser cannot measure)
    var w=0;
    try{ w=labelEls[i].getComputedTextLength(); }catch(err){ w=0; }
    labelW[i]=(w>0?w:5.2*String(nodes[i].label).length)+2;
  }

  function geometry(){
    var Wx=X(W);
    svg.setAttribute('viewBox','0 0 '+r2(Wx)+' '+H);
    bands.forEach(function(b){ b[0].setAttribute('x', r2(X(b[1].x0))); b[0].setAttribute('width', r2((b[1].x1-b[1].x0)*sx)); });
    grid.forEach(function(g){ g.setAttribute('x2', r2(X(P[2]))); });
    posLabs.forEach(function(p){ p[0].setAttribute('x', r2(X(p[1].x))); });
    tokLabs.forEach(function(p){ p[0].setAttribute('transform','translate('+r2(X(p[1].x))+','+(P[3]+24)+') rotate(-50)'); });
    for(var j=0;j<E;j++){
      var e=edges[j], s=L.nodes[idx[e.source]], t=L.nodes[idx[e.target]];
      var xs=r2(X(s[0])), xt=r2(X(t[0])), ym=r2((s[1]+t[1])/2);
      edgeEls[j].setAttribute('d','M'+xs+' '+s[1]+' C'+xs+' '+ym+' '+xt+' '+ym+' '+xt+' '+t[1]);
    }
    for(var i=0;i<N;i++){
      var c=L.nodes[i];
      nodeEls[i].setAttribute('cx', r2(X(c[0])));
      labelEls[i].setAttribute('x', r2(X(c[0])+c[2]+2));
    }
    applyZoom();
    placeLabels();
  }

  // labels: 'auto' = greedy by |score|, skipping labels that would overlap a placed label or a node
  var labelMode=document.getElementById('labels');
  function placeLabels(){
    var mode=labelMode.value, i, k;
    gT.style.display=(mode==='none')?'none':'';
    if(mode==='none'){ return; }
    var vis=[]; for(i=0;i<N;i++){ if(nodeOn[i]){ vis.push(i); } }
    if(mode==='all'){ for(i=0;i<N;i++){ labelEls[i].style.display=nodeOn[i]?'':'none'; } return; }
    vis.sort(function(a,b){ return Math.abs(nodes[b].score)-Math.abs(nodes[a].score); });
    var boxes=[];
    function hit(b){ for(var q=0;q<boxes.length;q++){ var o=boxes[q]; if(b[0]<o[2] && o[0]<b[2] && b[1]<o[3] && o[1]<b[3]){ return true; } } return false; }
    var circles=vis.map(function(i){ var c=L.nodes[i]; return [X(c[0])-c[2], c[1]-c[2], X(c[0])+c[2], c[1]+c[2], i]; });
    for(i=0;i<N;i++){ labelEls[i].style.display='none'; }
    vis.forEach(function(i){
      var c=L.nodes[i], x0=X(c[0])+c[2]+2, y1=c[1]-c[2]-1;
      var b=[x0, y1-9, x0+labelW[i], y1+1];
      if(b[2]>X(W)){ return; }
      if(hit(b)){ return; }
      for(k=0;k<circles.length;k++){ var o=circles[k]; if(o[4]!==i && b[0]<o[2] && o[0]<b[2] && b[1]<o[3] && o[1]<b[3]){ return; } }
      boxes.push(b);
      labelEls[i].style.display='';
    });
  }
  labelMode.value=(N<=OPT.auto_label_max)?'auto':'none';
  labelMode.addEventListener('change', placeLabels);

  // legend
  var lg=document.getElementById('legend');
  var legendEls=[];
  L.groups.forEach(function(g,k){
    var it=hel('span','lg',null,lg);
    var sw=hel('span','sw',null,it); sw.style.background=g.color;
    hel('span',null,g.name,it);
    hel('span','lgc','('+g.count+')',it);
    it.setAttribute('data-group', k);
    it.title='click to highlight this group';
    it.addEventListener('click', function(ev){ ev.stopPropagation(); toggleGroup(k); });
    legendEls.push(it);
  });
  var ep=hel('span','lgx',null,lg); var s1=hel('span','esw',null,ep); s1.style.borderColor=OPT.pos_color;
  hel('span',null,'positive edge',ep);
  var en=hel('span','lgx',null,lg); var s2=hel('span','esw',null,en); s2.style.borderColor=OPT.neg_color;
  hel('span',null,'negative edge',en);
  var sn=hel('span','lgx',null,lg); hel('span','sw neg',null,sn); hel('span',null,'\u2212 side of a neuron',sn);
  hel('span','lgc','size \u221d |score|, edge width \u221d |weight|',lg);

  // threshold and visibility
  var absSorted=edges.map(function(e){ return Math.abs(e.weight); }).sort(function(a,b){ return a-b; });
  var slider=document.getElementById('thr-slider'), num=document.getElementById('thr-num');
  var hideIso=document.getElementById('hide-iso');
  slider.min=0; slider.max=E; slider.step=1;
  var thr=Math.max(0, +OPT.min_abs_weight||0);
  var edgeOn=new Array(E), nodeOn=new Array(N);
  for(i=0;i<N;i++){ nodeOn[i]=true; }
  function countBelow(t){ var lo=0, hi=absSorted.length; while(lo<hi){ var m=(lo+hi)>>1; if(absSorted[m]<t){ lo=m+1; } else { hi=m; } } return lo; }
  function apply(){
    var ne=0, nn=0, deg=new Array(N), i, j;
    for(i=0;i<N;i++){ deg[i]=0; }
    for(j=0;j<E;j++){
      var on=Math.abs(edges[j].weight)>=thr;
      edgeOn[j]=on;
      edgeEls[j].style.display=on?'':'none';
      if(on){ ne++; deg[idx[edges[j].source]]++; deg[idx[edges[j].target]]++; }
    }
    for(i=0;i<N;i++){
      var v=!(hideIso.checked && deg[i]===0);
      nodeOn[i]=v;
      nodeEls[i].style.display=v?'':'none';
      if(v){ nn++; }
    }
    body.setAttribute('data-nodes', nn);
    body.setAttribute('data-edges', ne);
    document.getElementById('counts').textContent='Showing '+nn+' / '+N+' nodes, '+ne+' / '+E+' edges';
    placeLabels();
    refocus();
  }
  function setThr(t, fromSlider){
    thr=(t===Infinity)?Infinity:((isFinite(t) && t>0)?t:0);
    if(!fromSlider){ slider.value=countBelow(thr); }
    num.value=(thr===Infinity)?'':fmt(thr);
    apply();
  }
  slider.addEventListener('input', function(){
    var k=+slider.value;
    setThr(k<=0?0:(k>=E?Infinity:absSorted[k]), true);
  });
  num.addEventListener('change', function(){ var v=parseFloat(num.value); setThr(isNaN(v)?0:v, false); });
  hideIso.addEventListener('change', apply);

  // focus: hover or click a node, or click a legend group
  var pinned=null, hovered=null, groupSel=null;
  function clearFocus(){
    svg.classList.remove('focus');
    var hl=svg.querySelectorAll('.hl,.nb,.cur');
    for(var k=0;k<hl.length;k++){ hl[k].classList.remove('hl','nb','cur'); }
  }
  function mark(i){ nodeEls[i].classList.add('nb'); labelEls[i].classList.add('nb'); }
  function focusNodes(list, cur){
    clearFocus();
    if(!list.length){ return; }
    svg.classList.add('focus');
    list.forEach(function(i){
      mark(i);
      inE[i].concat(outE[i]).forEach(function(j){
        if(!edgeOn[j]){ return; }
        edgeEls[j].classList.add('hl');
        mark(idx[edges[j].source]); mark(idx[edges[j].target]);
      });
    });
    if(cur!==undefined && cur!==null){ nodeEls[cur].classList.add('cur'); }
  }
  function refocus(){
    if(hovered!==null){ focusNodes([hovered], hovered); }
    else if(pinned!==null){ focusNodes([pinned], pinned); }
    else if(groupSel!==null){
      var l=[]; for(var i=0;i<N;i++){ if(L.nodes[i][3]===groupSel && nodeOn[i]){ l.push(i); } }
      focusNodes(l, null);
    } else { clearFocus(); }
    legendEls.forEach(function(it,k){ it.classList.toggle('on', k===groupSel); });
  }
  function toggleGroup(k){ groupSel=(groupSel===k)?null:k; pinned=null; refocus(); }

  // tooltip (text only, via textContent)
  var tip=document.getElementById('tip');
  function row(tb,k,v){ var tr=hel('tr',null,null,tb); hel('td','k',k,tr); hel('td','v',v,tr); }
  function clearTip(){ while(tip.firstChild){ tip.removeChild(tip.firstChild); } }
  function showTip(ev, i){
    var n=nodes[i], nin=0, nout=0;
    clearTip();
    hel('div','t',n.label,tip);
    var tb=hel('table',null,null,tip);
    inE[i].forEach(function(j){ if(edgeOn[j]){ nin++; } }); outE[i].forEach(function(j){ if(edgeOn[j]){ nout++; } });
    row(tb,'layer', n.layer===-1?'-1 (embeddings)':(n.layer===meta.n_layers?n.layer+' (output)':n.layer));
    row(tb,'position', n.position);
    row(tb,'token', JSON.stringify(String(n.token)));
    row(tb,'site', n.site+(n.unit>=0?'  unit '+n.unit:'')+(n.sign?'  ('+n.sign+')':''));
    row(tb,'score', fmt(n.score));
    row(tb,'group', n.group===null?'\u2014':n.group);
    if(n.description){ row(tb,'description', n.description); }
    row(tb,'edges shown', nin+' in, '+nout+' out');
    tip.style.display='block';
    placeTip(ev);
  }
  function showEdgeTip(ev, j){
    var e=edges[j];
    clearTip();
    hel('div','t',nodes[idx[e.source]].label+' \u2192 '+nodes[idx[e.target]].label,tip);
    row(hel('table',null,null,tip),'weight', fmt(e.weight));
    tip.style.display='block';
    placeTip(ev);
  }
  function placeTip(ev){
    var x=ev.clientX+14, y=ev.clientY+14, w=tip.offsetWidth, h=tip.offsetHeight;
    if(x+w>window.innerWidth-4){ x=Math.max(4, ev.clientX-w-14); }
    if(y+h>window.innerHeight-4){ y=Math.max(4, ev.clientY-h-14); }
    tip.style.left=x+'px'; tip.style.top=y+'px';
  }
  function hideTip(){ tip.style.display='none'; }
  function isA(t, cls){ return t && t.classList && t.classList.contains(cls); }

  gN.addEventListener('mouseover', function(ev){
    if(!isA(ev.target,'node')){ return; }
    hovered=+ev.target.getAttribute('data-i'); refocus(); showTip(ev, hovered);
  });
  gN.addEventListener('mousemove', function(ev){ if(tip.style.display==='block'){ placeTip(ev); } });
  gN.addEventListener('mouseout', function(ev){
    if(!isA(ev.target,'node')){ return; }
    hovered=null; hideTip(); refocus();
  });
  gN.addEventListener('click', function(ev){
    if(!isA(ev.target,'node')){ return; }
    ev.stopPropagation();
    var i=+ev.target.getAttribute('data-i');
    pinned=(pinned===i)?null:i; groupSel=null; refocus();
  });
  gE.addEventListener('mouseover', function(ev){ if(isA(ev.target,'edge')){ showEdgeTip(ev, +ev.target.getAttribute('data-i')); } });
  gE.addEventListener('mousemove', function(ev){ if(tip.style.display==='block'){ placeTip(ev); } });
  gE.addEventListener('mouseout', hideTip);
  svg.addEventListener('click', function(){ pinned=null; groupSel=null; refocus(); });
  document.addEventListener('keydown', function(ev){ if(ev.key==='Escape'){ pinned=null; groupSel=null; hovered=null; hideTip(); refocus(); } });

  // zoom (uniform) on top of the horizontal stretch
  var zoom=document.getElementById('zoom'), wrap=document.getElementById('wrap');
  function applyZoom(){
    var z=(+zoom.value)/100;
    svg.setAttribute('width', (X(W)*z).toFixed(1)); svg.setAttribute('height', (H*z).toFixed(1));
    document.getElementById('zoom-val').textContent=zoom.value+'%';
  }
  var lastAvail=-1;
  function stretch(){   // horizontal stretch so the plot fills the available width
    var avail=wrap.clientWidth||0;
    lastAvail=avail;
    var a=(avail>0?avail:W)-10;
    sx=Math.min(OPT.max_stretch, Math.max(1, (a-P[0]-(W-P[2]))/(P[2]-P[0])));
    document.body.setAttribute('data-stretch', sx.toFixed(3));
    geometry();
  }
  function fitWidth(){ zoom.value=100; stretch(); }
  zoom.addEventListener('input', applyZoom);
  document.getElementById('fit').addEventListener('click', fitWidth);
  // re-stretch when the available width changes (window resize; iframes in notebooks are often laid
  // out after the script ran). Debounced, so the observer never loops.
  var rt=null;
  function onResize(){
    if(rt){ clearTimeout(rt); }
    rt=setTimeout(function(){ rt=null; if((wrap.clientWidth||0)!==lastAvail){ stretch(); } }, 120);
  }
  window.addEventListener('resize', onResize);
  window.addEventListener('load', onResize);
  if(typeof ResizeObserver==='function'){ new ResizeObserver(onResize).observe(wrap); }

  body.setAttribute('data-total-nodes', N);
  body.setAttribute('data-total-edges', E);
  fitWidth();
  setThr(thr, false);
  body.setAttribute('data-ready', '1');
}
try { main(); }
catch(err){ window.__circuitFail(err && err.message ? err.message : String(err)); throw err; }
})();
