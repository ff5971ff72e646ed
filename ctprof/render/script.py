"""The viewer script embedded in every SVG (zoom, reset, search, details,
fit to the window).

Kept as a Python string so the package needs no data files.  It must never
contain the CDATA terminator; ``CTPROF_CONFIG`` is replaced by the JSON
configuration (with <, > and & escaped) when the SVG is written.

The script comes first in the file, before the frames (as flamegraph.pl's
does).  On a large graph the browser shows the page while it is still
reading the rest, so Search (the button, Ctrl-F) and Escape are answered
from the first moment: a search asked for before the frames are read is
queued and run by :func:`init` when the document is complete.  ``init``
reads the frames, fits the graph to the window's width, keeps the controls
and the details line in view while the page scrolls, and opens a tall flame
graph at its base (where the roots are).
"""

SCRIPT = r"""
// ctprof flame graph viewer: zoom, reset, search, details, fit to the
// window.  Standalone, no network.  Reads everything from the SVG itself:
// each frame is a <g> in #frames holding <title>NAME (N unit, P%...)</title>
// <rect/> and, when the name fits, <text/>.  Names are only ever read and
// written as textContent.
(function () {
  "use strict";
  var cfg = CTPROF_CONFIG;
  // Until init() has read the frames, a search is asked for at once and its
  // term queued; afterwards the viewer answers itself.
  var queue = [];
  function ready() { return window.ctprof && window.ctprof.ready; }
  function ask() {
    var term = window.prompt("Search (regular expression):", "");
    if (term) queue.push(["search", term]);
  }
  document.addEventListener("click", function (e) {
    if (e.target && e.target.id === "search") {
      if (ready()) window.ctprof.ui("search"); else ask();
    }
  }, false);
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F" || e.keyCode === 70)) {
      e.preventDefault();
      if (ready()) window.ctprof.ui("search"); else ask();
    } else if (e.key === "Escape") {
      if (ready()) window.ctprof.ui("escape"); else queue.push(["escape"]);
    }
  }, false);

  // Runs once the document is complete: reads the frames, wires zoom and
  // details, fits the page to the window, then runs what was queued.
  function init() {
    if (window.ctprof && window.ctprof.ready) return;
    var doc = document;
    var svg = doc.documentElement;
    var frames = doc.getElementById("frames");
    var details = doc.getElementById("details");
    var unzoomBtn = doc.getElementById("unzoom");
    var searchBtn = doc.getElementById("search");
    var matchedText = doc.getElementById("matched");
    // What stays in view: the controls at the top, the details line at the bottom.
    function byIds(ids) {
      var out = [];
      for (var i = 0; i < ids.length; i++) { var el = doc.getElementById(ids[i]); if (el) out.push(el); }
      return out;
    }
    var header = byIds(["controls", "title", "subtitle", "unzoom", "search", "legend"]);
    var footer = byIds(["footer", "details", "matched"]);
    var EPS = 0.002;
    var PAD = cfg.pad, ORIG = cfg.width - 2 * cfg.pad;
    var CHAR = cfg.fontSize * cfg.fontWidth;
    var width = cfg.width, FULL = ORIG;
    var all = [];
    var zoomed = null, searchTerm = null;

    // Frames are kept as fractions of the full width (x0, w0 in [0, 1]), so
    // the graph can be redrawn at any window width.
    var nodes = frames.children || frames.childNodes;
    var total = 0;
    for (var i = 0; i < nodes.length; i++) {
      var g = nodes[i];
      if (g.nodeType !== 1) continue;
      var title = g.firstElementChild, rect = title.nextElementSibling;
      var text = rect.nextElementSibling;
      var t = title.textContent, cut = t.lastIndexOf(" (");
      var value = parseFloat((cut >= 0 ? t.slice(cut + 2) : "").replace(/,/g, "")) || 0;
      var f = {
        g: g, rect: rect, text: text, name: cut >= 0 ? t.slice(0, cut) : t, value: value,
        x0: (parseFloat(rect.getAttribute("x")) - PAD) / ORIG, w0: parseFloat(rect.getAttribute("width")) / ORIG,
        y: parseFloat(rect.getAttribute("y")), fill: rect.getAttribute("fill")
      };
      g.ctIndex = all.length;
      all.push(f);
      if (value > total) total = value;
    }

    function fit(f, x, w) {
      var chars = Math.floor((w - 6) / CHAR);
      var label = "";
      if (chars >= 3) label = f.name.length <= chars ? f.name : f.name.slice(0, chars - 2) + "..";
      if (!f.text) {
        if (!label) return;
        f.text = doc.createElementNS("http://www.w3.org/2000/svg", "text");
        f.text.setAttribute("y", (f.y + cfg.frameHeight - 4).toFixed(1));
        f.g.appendChild(f.text);
      }
      f.text.setAttribute("x", (x + 3).toFixed(2));
      f.text.textContent = label;
    }
    function place(f, x, w, cls) {
      f.rect.setAttribute("x", x.toFixed(3));
      f.rect.setAttribute("width", w.toFixed(3));
      if ((f.g.getAttribute("class") || "") !== cls) f.g.setAttribute("class", cls);
      fit(f, x, w);
    }
    function below(a, b) {  // is a nearer the root than b?
      return cfg.inverted ? a.y < b.y : a.y > b.y;
    }
    function draw() {
      if (zoomed) {
        var z = zoomed, start = z.x0, end = z.x0 + z.w0, scale = FULL / z.w0;
        for (var i = 0; i < all.length; i++) {
          var f = all[i];
          if (f.x0 + f.w0 <= start + EPS / ORIG || f.x0 >= end - EPS / ORIG) {
            if (f.g.getAttribute("class") !== "hide") f.g.setAttribute("class", "hide");
          } else if (below(f, z)) {
            place(f, PAD, FULL, "parent");
          } else {
            var x = PAD + (Math.max(f.x0, start) - start) * scale;
            var w = (Math.min(f.x0 + f.w0, end) - Math.max(f.x0, start)) * scale;
            place(f, x, w, "");
          }
        }
      } else {
        for (var j = 0; j < all.length; j++) place(all[j], PAD + all[j].x0 * FULL, all[j].w0 * FULL, "");
      }
    }
    function zoom(z) {
      zoomed = z;
      draw();
      unzoomBtn.setAttribute("class", "");
    }
    function unzoom() {
      zoomed = null;
      draw();
      unzoomBtn.setAttribute("class", "hide");
    }
    function clearSearch() {
      searchTerm = null;
      for (var i = 0; i < all.length; i++) all[i].rect.setAttribute("fill", all[i].fill);
      matchedText.textContent = " ";
      searchBtn.textContent = "Search";
    }
    function search(term) {
      var re;
      try { re = new RegExp(term); } catch (e) {
        matchedText.textContent = "Bad regex: " + e.message;
        return;
      }
      searchTerm = term;
      var hits = [];
      for (var i = 0; i < all.length; i++) {
        var f = all[i];
        if (re.test(f.name)) { f.rect.setAttribute("fill", cfg.highlight); hits.push(f); }
        else f.rect.setAttribute("fill", f.fill);
      }
      // Count each matched subtree once: sort by start, widest first, and
      // skip boxes inside one already counted (boxes overlap only if nested).
      hits.sort(function (a, b) { return a.x0 - b.x0 || b.w0 - a.w0; });
      var count = 0, end = -1;
      for (i = 0; i < hits.length; i++) {
        if (hits[i].x0 >= end - EPS / ORIG) { count += hits[i].value; end = hits[i].x0 + hits[i].w0; }
      }
      var pct = total ? 100 * count / total : 0;
      matchedText.textContent = "Matched: " + (Math.round(pct * 100) / 100) + "%";
      searchBtn.textContent = "Reset Search";
    }
    function promptSearch() {
      var term = window.prompt("Search (regular expression):", searchTerm || "");
      if (term === null) return;
      if (term === "") clearSearch(); else search(term);
    }

    // -- the page around the graph --------------------------------------------
    function setX(id, x) {
      var el = doc.getElementById(id);
      if (el) el.setAttribute("x", x);
    }
    // A heading longer than the window is drawn in a smaller font.
    function shrinkToFit(id, room) {
      var el = doc.getElementById(id);
      if (!el || !el.getComputedTextLength) return;
      el.style.fontSize = "";
      var len = el.getComputedTextLength();
      if (len > room && len > 0) {
        var size = parseFloat(window.getComputedStyle(el).fontSize) || cfg.fontSize;
        el.style.fontSize = Math.max(6, Math.floor(size * room / len)) + "px";
      }
    }
    // Width follows the window (never narrower than cfg.minWidth): the SVG's
    // size, the backgrounds, the centred and right-aligned texts, the frames.
    function fitWidth() {
      var w = Math.max(cfg.minWidth, Math.floor(window.innerWidth || cfg.width));
      if (w === width) return;
      width = w;
      FULL = w - 2 * PAD;
      svg.setAttribute("width", w);
      svg.setAttribute("viewBox", "0 0 " + w + " " + cfg.height);
      var bgs = doc.querySelectorAll(".background");
      for (var i = 0; i < bgs.length; i++) bgs[i].setAttribute("width", w);
      setX("title", w / 2);
      setX("subtitle", w / 2);
      shrinkToFit("title", w - 2 * PAD - 160);    // room for Reset Zoom and Search
      shrinkToFit("subtitle", w - 2 * PAD);
      setX("nosamples", w / 2);
      setX("search", w - PAD);
      setX("matched", w - PAD);
      draw();
    }
    // The controls (title, Search, legend) stay at the top of the window and
    // the details line at its bottom while a tall graph scrolls.
    function pin() {
      var top = window.scrollY || window.pageYOffset || 0;
      var view = window.innerHeight || cfg.height;
      var down = Math.min(0, top + view - cfg.height), i;
      for (i = 0; i < header.length; i++) header[i].setAttribute("transform", "translate(0," + top + ")");
      for (i = 0; i < footer.length; i++) footer[i].setAttribute("transform", "translate(0," + down + ")");
    }
    var pending = false;
    function relayout() {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(function () { pending = false; fitWidth(); pin(); });
    }

    frames.addEventListener("click", function (e) {
      var g = e.target.closest ? e.target.closest("g") : e.target.parentNode;
      if (g && g.ctIndex !== undefined) zoom(all[g.ctIndex]);
    });
    frames.addEventListener("mouseover", function (e) {
      var g = e.target.closest ? e.target.closest("g") : e.target.parentNode;
      if (g && g.ctIndex !== undefined) details.textContent = all[g.ctIndex].g.firstElementChild.textContent;
    });
    frames.addEventListener("mouseout", function () { details.textContent = " "; });
    unzoomBtn.addEventListener("click", unzoom);
    window.addEventListener("resize", relayout);
    window.addEventListener("scroll", pin);

    // The controls were written before the frames (so they show while the
    // file loads); drawn last, they stay above the frames when pinned.
    var pinned = header.concat(footer);
    for (i = 0; i < pinned.length; i++) svg.appendChild(pinned[i]);
    fitWidth();
    // A flame graph's roots are at the bottom: a graph taller than the
    // window opens there (an icicle graph has them at the top).
    if (!cfg.inverted && cfg.height > (window.innerHeight || 0)) window.scrollTo(0, cfg.height);
    pin();

    function ui(kind) {
      if (kind === "search") { if (searchTerm !== null) clearSearch(); else promptSearch(); }
      else if (kind === "escape") { clearSearch(); if (zoomed) unzoom(); }
    }
    // for the early handlers, scripted use and tests
    window.ctprof = { zoom: function (i) { zoom(all[i]); }, unzoom: unzoom, search: search,
                      clearSearch: clearSearch, frames: all, ui: ui, ready: true };
    for (var q = 0; q < queue.length; q++) {
      if (queue[q][0] === "search") search(queue[q][1]); else ui(queue[q][0]);
    }
    queue.length = 0;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init, false);
  else init();
})();
"""

assert "]]>" not in SCRIPT
