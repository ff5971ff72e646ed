"""The viewer script embedded in every SVG (zoom, reset, search, details).

Kept as a Python string so the package needs no data files.  It must never
contain the CDATA terminator; ``CTPROF_CONFIG`` is replaced by the JSON
configuration (with <, > and & escaped) when the SVG is written."""

SCRIPT = r"""
// ctprof flame graph viewer: zoom, reset, search, details.  Standalone, no
// network.  Reads everything from the SVG itself: each frame is a <g> in
// #frames holding <title>NAME (N unit, P%...)</title><rect/> and, when the
// name fits, <text/>.  Names are only ever read and written as textContent.
(function () {
  "use strict";
  var cfg = CTPROF_CONFIG;
  var doc = document;
  var frames = doc.getElementById("frames");
  var details = doc.getElementById("details");
  var unzoomBtn = doc.getElementById("unzoom");
  var searchBtn = doc.getElementById("search");
  var matchedText = doc.getElementById("matched");
  var EPS = 0.002;
  var PAD = cfg.pad, FULL = cfg.width - 2 * cfg.pad;
  var CHAR = cfg.fontSize * cfg.fontWidth;
  var all = [];
  var zoomed = null, searchTerm = null;

  function parseInfo(g) {
    var rect = g.getElementsByTagName("rect")[0];
    var title = g.getElementsByTagName("title")[0].textContent;
    var cut = title.lastIndexOf(" (");
    var rest = cut >= 0 ? title.slice(cut + 2) : "";
    var value = parseFloat(rest.replace(/,/g, "")) || 0;
    return {
      g: g, rect: rect, name: cut >= 0 ? title.slice(0, cut) : title, value: value,
      x: parseFloat(rect.getAttribute("x")), w: parseFloat(rect.getAttribute("width")),
      y: parseFloat(rect.getAttribute("y")), fill: rect.getAttribute("fill"),
      text: g.getElementsByTagName("text")[0] || null
    };
  }
  var nodes = frames.getElementsByTagName("g");
  for (var i = 0; i < nodes.length; i++) {
    var info = parseInfo(nodes[i]);
    nodes[i].ctIndex = i;
    all.push(info);
  }
  var total = 0;
  for (i = 0; i < all.length; i++) if (all[i].value > total) total = all[i].value;

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
    f.g.setAttribute("class", cls);
    fit(f, x, w);
  }
  function below(a, b) {  // is a nearer the root than b?
    return cfg.inverted ? a.y < b.y : a.y > b.y;
  }
  function zoom(z) {
    zoomed = z;
    var start = z.x, end = z.x + z.w, scale = FULL / z.w;
    for (var i = 0; i < all.length; i++) {
      var f = all[i];
      if (f.x + f.w <= start + EPS || f.x >= end - EPS) {
        f.g.setAttribute("class", "hide");
      } else if (below(f, z)) {
        place(f, PAD, FULL, "parent");
      } else {
        var x = PAD + (Math.max(f.x, start) - start) * scale;
        var w = (Math.min(f.x + f.w, end) - Math.max(f.x, start)) * scale;
        place(f, x, w, "");
      }
    }
    unzoomBtn.setAttribute("class", "");
  }
  function unzoom() {
    zoomed = null;
    for (var i = 0; i < all.length; i++) place(all[i], all[i].x, all[i].w, "");
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
    hits.sort(function (a, b) { return a.x - b.x || b.w - a.w; });
    var count = 0, end = -1;
    for (i = 0; i < hits.length; i++) {
      if (hits[i].x >= end - EPS) { count += hits[i].value; end = hits[i].x + hits[i].w; }
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
  frames.addEventListener("click", function (e) {
    var g = e.target.closest ? e.target.closest("g") : e.target.parentNode;
    if (g && g.ctIndex !== undefined) zoom(all[g.ctIndex]);
  });
  frames.addEventListener("mouseover", function (e) {
    var g = e.target.closest ? e.target.closest("g") : e.target.parentNode;
    if (g && g.ctIndex !== undefined) {
      var f = all[g.ctIndex];
      details.textContent = f.g.getElementsByTagName("title")[0].textContent;
    }
  });
  frames.addEventListener("mouseout", function () { details.textContent = " "; });
  unzoomBtn.addEventListener("click", unzoom);
  searchBtn.addEventListener("click", function () {
    if (searchTerm !== null) clearSearch(); else promptSearch();
  });
  window.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F" || e.keyCode === 70)) {
      e.preventDefault();
      promptSearch();
    } else if (e.key === "Escape") {
      clearSearch();
      if (zoomed) unzoom();
    }
  }, false);
  // for scripted use and tests
  window.ctprof = { zoom: function (i) { zoom(all[i]); }, unzoom: unzoom, search: search,
                    clearSearch: clearSearch, frames: all };
})();
"""

assert "]]>" not in SCRIPT
