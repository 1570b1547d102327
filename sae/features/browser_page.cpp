// The feature browser's page (see browser.h): HTML skeleton, CSS and JS, all written here. The JS
// reads the embedded JSON (browser_data's layout: "about", "edges", "vocab", "features" with per
// feature n, d, h, top, up, down, c), builds every element with createElement, textContent and
// setAttribute (never innerHTML), and when it has drawn the page adds <div id="browser-ready"
// data-features=F data-selected=I> (or <div id="browser-error"> with the message), which the
// headless-browser test looks for. The hash #fN selects feature N; #search=N types N into the search box.
#include "sae/features/browser.h"

namespace sae {

namespace {

const char* kHead = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SAE feature browser</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 8px 16px; background: #263238; color: #eceff1; }
header h1 { font-size: 18px; margin: 0 0 4px 0; }
header .about { font-size: 12px; color: #b0bec5; }
#main { display: flex; height: calc(100vh - 64px); }
#side { width: 330px; border-right: 1px solid #ccc; display: flex; flex-direction: column; background: #fff; }
#search-box { padding: 8px; border-bottom: 1px solid #ddd; font-size: 13px; }
#search { width: 120px; }
#search-msg { color: #b71c1c; margin-left: 6px; }
#list { overflow-y: auto; flex: 1; font-size: 12px; }
.feature-row { display: flex; gap: 8px; padding: 2px 8px; cursor: pointer; white-space: nowrap; }
.feature-row:hover { background: #eef; }
.feature-row.selected { background: #ffe0b2; }
.feature-row .idx { flex: none; width: 56px; font-family: monospace; }
.feature-row .dens { flex: none; width: 64px; text-align: right; font-family: monospace; }
.feature-row .hint { flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; color: #555; white-space: pre; }
#panel { flex: 1; overflow-y: auto; padding: 12px 20px; }
#panel h2 { margin: 0 0 6px 0; font-size: 20px; }
.facts { font-size: 13px; color: #333; margin-bottom: 8px; }
.section { margin-top: 14px; }
.section h3 { font-size: 14px; margin: 0 0 6px 0; color: #37474f; }
.context { margin: 4px 0; font-size: 13px; }
.context .meta { color: #666; font-size: 11px; font-family: monospace; }
.tokens { font-family: monospace; white-space: pre-wrap; line-height: 1.9; }
.tok { padding: 1px 0; border-radius: 2px; white-space: pre; unicode-bidi: isolate; }
.tok.max { outline: 1px solid #e65100; }
.tok.unknown { color: #999; }
table.logits { border-collapse: collapse; font-size: 12px; margin-right: 24px; }
table.logits td { padding: 1px 6px; font-family: monospace; white-space: pre; }
.logit-tables { display: flex; }
.logit-tables > div { margin-right: 40px; }
svg text { font-size: 10px; fill: #444; }
.note { color: #777; font-size: 12px; }
#browser-error { background: #b71c1c; color: #fff; padding: 8px; }
</style>
</head>
<body>
<header><h1 id="title">SAE feature browser</h1><div class="about" id="about"></div></header>
<div id="main">
<div id="side">
<div id="search-box">Feature # <input id="search" type="number" min="0" step="1"> <span id="search-msg"></span></div>
<div id="list"></div>
</div>
<div id="panel"></div>
</div>
<script type="application/json" id="feature-data">)HTML";

const char* kTail = R"HTML(</script>
<script>
(function () {
  'use strict';
  function fail(message) {
    if (document.getElementById('browser-error')) return;
    var e = document.createElement('div');
    e.id = 'browser-error';
    e.textContent = 'feature browser error: ' + message;
    document.body.insertBefore(e, document.body.firstChild);
  }
  window.addEventListener('error', function (event) { fail(event.message); });

  var data, features, order, selected = -1;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function num(x) {
    if (x === null || x === undefined) return 'n/a';
    if (x === 0) return '0';
    return Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3 ? x.toExponential(2) : String(Number(x.toPrecision(4)));
  }
  function percent(d) { return d === 0 ? '0%' : String(Number((100 * d).toPrecision(3))) + '%'; }
  function tokenText(id) {
    var t = data.vocab[String(id)];
    return t === undefined ? '[' + id + ']' : t;
  }
  function hint(f) {
    if (f.c) return 'concept ' + f.c[0] + ' (cos ' + num(f.c[1]) + ')';
    if (data.has_tokens && f.top.length > 0 && f.top[0].t[data.about.context] >= 0)  // -1: a BOS row, no token
      return tokenText(f.top[0].t[data.about.context]);
    if (f.up && f.up.length > 0) return '\u2191 ' + tokenText(f.up[0][0]);
    return '';
  }

  function drawList() {
    order = [];
    for (var i = 0; i < features.length; ++i) order.push(i);
    order.sort(function (a, b) { return features[b].n - features[a].n || a - b; });  // exact counts
    var list = document.getElementById('list'), fragment = document.createDocumentFragment();
    order.forEach(function (i) {
      var f = features[i], row = el('div', 'feature-row');
      row.id = 'row-' + i;
      row.setAttribute('data-feature', String(i));
      row.appendChild(el('span', 'idx', '#' + i));
      row.appendChild(el('span', 'dens', percent(f.d)));
      row.appendChild(el('span', 'hint', hint(f)));
      row.addEventListener('click', function () { select(i, true); });
      fragment.appendChild(row);
    });
    list.appendChild(fragment);
  }

  var SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attributes) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attributes) e.setAttribute(k, String(attributes[k]));
    return e;
  }
  // The histogram's non-empty range of bins, bar heights on a log scale (log(1 + count)).
  function drawHistogram(f) {
    var width = 520, height = 130, left = 8, bottom = 18;
    var box = svg('svg', { width: width, height: height, id: 'histogram', role: 'img' });
    if (f.h.length === 0) {
      var empty = svg('text', { x: 10, y: 20 });
      empty.textContent = 'never fired in the window';
      box.appendChild(empty);
      return box;
    }
    var first = f.h[0][0], last = f.h[f.h.length - 1][0], bins = last - first + 1, top = 0;
    f.h.forEach(function (b) { top = Math.max(top, Math.log(1 + b[1])); });
    var bar = (width - 2 * left) / bins;
    f.h.forEach(function (b) {
      var h = (height - bottom - 6) * Math.log(1 + b[1]) / top;
      var rect = svg('rect', { x: left + (b[0] - first) * bar, y: height - bottom - h, width: Math.max(1, bar - 1),
                               height: h, fill: '#ef6c00', 'class': 'bar' });
      var tip = svg('title', {});
      var upper = b[0] + 1 < data.edges.length ? num(data.edges[b[0] + 1]) : '\u221e';
      tip.textContent = '[' + num(data.edges[b[0]]) + ', ' + upper + '): ' + b[1] + ' tokens';
      rect.appendChild(tip);
      box.appendChild(rect);
    });
    var low = svg('text', { x: left, y: height - 4 });
    low.textContent = num(data.edges[first]);
    var high = svg('text', { x: width - left, y: height - 4, 'text-anchor': 'end' });
    high.textContent = last + 1 < data.edges.length ? num(data.edges[last + 1]) : '\u221e';
    var mid = svg('text', { x: width / 2, y: height - 4, 'text-anchor': 'middle' });
    mid.textContent = 'activation (half-octave bins; height: log(1 + tokens))';
    box.appendChild(low);
    box.appendChild(high);
    box.appendChild(mid);
    return box;
  }

  // One top activation: its tokens, each shaded by the feature's value there relative to the entry's.
  function drawContext(entry, rank) {
    var c = data.about.context, box = el('div', 'context');
    // A row of no known place (a BOS row kept in training: story and position -1) is said so.
    var where = entry.s >= 0 ? 'story ' + entry.s + ', token ' + entry.p
                             : entry.p >= 0 ? 'token ' + entry.p + ' of the data' : 'a row of no story (a BOS)';
    var seen = data.about.gathered_by === 'sae_features' ? '' : ', seen at step ' + entry.st;
    box.appendChild(el('div', 'meta', '#' + (rank + 1) + '  ' + num(entry.v) + '  (' + where + seen + ')'));
    var line = el('div', 'tokens');
    for (var o = 0; o < entry.t.length; ++o) {
      var id = entry.t[o], value = entry.a[o], position = entry.p + o - c;
      if (id === -1) continue;  // outside the story (or not known)
      var span = el('span', 'tok', id >= 0 ? tokenText(id) : ' t' + position + ' ');
      if (o === c) span.className += ' max';
      if (value === null) {
        span.className += ' unknown';
        span.setAttribute('title', data.about.gathered_by === 'sae_features'
                                       ? 'not recorded (the story was encoded in blocks: another block held this token)'
                                       : 'not recorded (the batch did not hold this token)');
      } else {
        var alpha = entry.v > 0 ? Math.min(1, Math.max(0, value / entry.v)) : 0;
        span.style.backgroundColor = 'rgba(255, 140, 0, ' + alpha.toFixed(3) + ')';
        span.setAttribute('title', 'activation ' + num(value));
        span.setAttribute('data-value', String(value));
      }
      line.appendChild(span);
    }
    box.appendChild(line);
    return box;
  }

  function logitTable(title, pairs) {
    var wrap = el('div');
    wrap.appendChild(el('h3', null, title));
    var table = el('table', 'logits');
    pairs.forEach(function (p) {
      var tr = el('tr');
      tr.appendChild(el('td', null, tokenText(p[0])));
      tr.appendChild(el('td', null, num(p[1])));
      table.appendChild(tr);
    });
    wrap.appendChild(table);
    return wrap;
  }

  function drawPanel(i) {
    var f = features[i], panel = document.getElementById('panel');
    while (panel.firstChild) panel.removeChild(panel.firstChild);
    panel.setAttribute('data-feature', String(i));
    panel.appendChild(el('h2', null, 'Feature #' + i));
    panel.appendChild(el('div', 'facts', 'fired on ' + f.n + ' of ' + data.about.tokens + ' tokens (density ' +
                                       percent(f.d) + ')' + (f.top.length ? ', largest activation ' + num(f.top[0].v) : '')));
    if (f.c) panel.appendChild(el('div', 'facts concept', 'planted concept ' + f.c[0] + ', cosine ' + num(f.c[1])));
    if (f.sn) panel.appendChild(el('div', 'facts sources', 'decoder norm per source: ' + f.sn.map(function (v, s) {
      return data.about.sources[s] + ' ' + num(v);
    }).join(', ')));
    var hist = el('div', 'section');
    hist.appendChild(el('h3', null, 'Activations'));
    hist.appendChild(drawHistogram(f));
    panel.appendChild(hist);
    var tops = el('div', 'section');
    tops.id = 'contexts';
    tops.appendChild(el('h3', null, 'Top activations (one per story)'));
    if (f.top.length === 0) tops.appendChild(el('div', 'note', 'none in the window'));
    f.top.forEach(function (entry, rank) { tops.appendChild(drawContext(entry, rank)); });
    panel.appendChild(tops);
    if (f.up) {
      var logits = el('div', 'section logit-tables');
      logits.appendChild(logitTable('Promoted tokens (W_dec \u00b7 W_U)', f.up));
      logits.appendChild(logitTable('Suppressed tokens', f.down));
      panel.appendChild(logits);
    }
  }

  function select(i, updateHash) {
    if (!(i >= 0 && i < features.length)) return false;
    var old = document.getElementById('row-' + selected);
    if (old) old.classList.remove('selected');
    selected = i;
    var row = document.getElementById('row-' + i);
    if (row) {
      row.classList.add('selected');
      row.scrollIntoView({ block: 'nearest' });
    }
    drawPanel(i);
    if (updateHash && location.hash !== '#f' + i) history.replaceState(null, '', '#f' + i);
    var ready = document.getElementById('browser-ready');
    if (ready) ready.setAttribute('data-selected', String(i));
    return true;
  }

  function fromHash() {
    var m = /^#f?(\d+)$/.exec(location.hash);
    return m ? parseInt(m[1], 10) : -1;
  }

  try {
    data = JSON.parse(document.getElementById('feature-data').textContent);
    features = data.features;
    var a = data.about;
    document.getElementById('title').textContent = 'SAE feature browser: ' + data.title;
    document.title = 'Features: ' + data.title;
    document.getElementById('about').textContent = a.architecture + ' SAE, d_in ' + a.d_in + ', ' + a.d_sae +
        ' features; statistics of ' + a.tokens + ' tokens (' + a.steps + (a.gathered_by === 'sae_features' ?
        ' stories' : ' steps, ' + a.first_step + ' to ' + a.last_step) + ') by ' + a.gathered_by + '; data ' + a.data +
        (a.model ? '; model ' + a.model : '');
    drawList();
    var search = document.getElementById('search'), message = document.getElementById('search-msg');
    search.setAttribute('max', String(features.length - 1));
    function searched() {
      var text = search.value.trim(), i = parseInt(text, 10);
      message.textContent = '';
      if (text === '') return;
      if (!/^\d+$/.test(text) || !select(i, true)) message.textContent = 'no feature ' + text;
    }
    search.addEventListener('input', searched);
    search.addEventListener('change', searched);
    window.addEventListener('hashchange', function () { select(fromHash(), false); });
    var ready = el('div');
    ready.id = 'browser-ready';
    ready.style.display = 'none';
    ready.setAttribute('data-features', String(features.length));
    document.body.appendChild(ready);
    var first = fromHash(), typed = /^#search=(.*)$/.exec(location.hash);
    if (first >= 0 && first < features.length) search.value = String(first);
    select(first >= 0 && first < features.length ? first : order[0], false);
    if (first >= features.length) message.textContent = 'no feature ' + first;  // #fN past the end
    if (typed) {  // #search=N: as if N had been typed into the search box (a malformed escape: as written)
      var text = typed[1];
      try {
        text = decodeURIComponent(text);
      } catch (malformed) {
      }
      if (/^\d+$/.test(text.trim())) {
        search.value = text;
        searched();
      } else {
        message.textContent = 'no feature ' + text;  // the number box would drop what is not a digit
      }
    }
  } catch (error) {
    fail(error && error.message ? error.message : String(error));
  }
})();
</script>
</body>
</html>
)HTML";

}  // namespace

void write_browser_html(const BrowserData& data, const std::function<void(const std::string&)>& write) {
  // The data's JSON: the head object with "features":[...] added as its last member.
  std::string head = data.head.dump();
  if (!data.head.is_object() || head.size() < 2) throw Error("browser page: the data's head is not a JSON object");
  head.pop_back();  // its closing brace
  std::string piece = kHead + json_for_script(head) + (head.size() > 1 ? "," : "") + "\"features\":[";
  constexpr size_t kPiece = size_t(1) << 20;
  for (size_t i = 0; i < data.features.size(); ++i) {
    if (i > 0) piece += ',';
    piece += json_for_script(data.features[i]);
    if (piece.size() >= kPiece) {
      write(piece);
      piece.clear();
    }
  }
  piece += "]}";
  piece += kTail;
  write(piece);
}

std::string browser_html(const BrowserData& data) {
  std::string page;
  write_browser_html(data, [&](const std::string& piece) { page += piece; });
  return page;
}

}  // namespace sae
