// neuronlib circuit viewer: error guard. Any uncaught error sets data-error on <html>/<body> and shows it.
(function(){
  function fail(msg){
    try{
      document.documentElement.setAttribute('data-error', String(msg));
      if(document.body){ document.body.setAttribute('data-error', String(msg)); }
      var el=document.getElementById('error');
      if(el){ el.textContent='Viewer error: '+String(msg); el.style.display='block'; }
    }catch(e){}
  }
  window.__circuitFail = fail;
  window.addEventListener('error', function(ev){
    fail((ev && ev.message ? ev.message : 'error') + (ev && ev.lineno ? ' (line '+ev.lineno+')' : ''));
  });
})();
