// The web page of `engine serve`: search form -> /search -> ranked moments, each with a three.js skeleton
// preview (viewer.js) looping the moment with 1 s of context, in/out handles that set the exported span,
// BVH / NPY / JSON / GLB downloads of that span, and "more like this" (POST /search with that span: the
// moments of other motions most similar to it, shown like a text search). ES modules, three.js vendored under /static/vendor/
// (import map in index.html); no framework, no build step.
import { prepareMotion, Player } from "./viewer.js";

const $ = (sel, root = document) => root.querySelector(sel);
const motionCache = new Map();  // motion_id -> Promise<motion with joints>
let previews = [];              // the players the animation loop ticks
let searchSeq = 0;

// ------------------------------------------------------------------ data
function fetchJSON(url, init = undefined) {
  return fetch(url, init).then(async (resp) => {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    if (!resp.ok) {
      const msg = body && body.detail ? body.detail : `${resp.status} ${resp.statusText}`;
      throw new Error(typeof msg === "string" ? msg : JSON.stringify(msg));
    }
    return body;
  });
}

function postJSON(url, body) {
  return fetchJSON(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

function getMotion(id) {
  if (!motionCache.has(id)) {
    const p = fetchJSON(`/motions/${id}?joints=true`).then(prepareMotion);
    p.catch(() => motionCache.delete(id));
    motionCache.set(id, p);
  }
  return motionCache.get(id);
}

// ------------------------------------------------------------------ results
function fmt(x, digits = 3) {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

// Times with 9 decimals: frame boundaries k / fps survive the server's floor / ceil (1e-6 tolerance).
function clipUrl(motionId, startS, endS, format) {
  const p = new URLSearchParams({ start_s: startS.toFixed(9), end_s: endS.toFixed(9), format });
  return `/motions/${motionId}/clip?${p}`;
}

const FORMATS = ["bvh", "npy", "json", "glb"];

function renderRow(mo) {
  const li = $("#row-template").content.firstElementChild.cloneNode(true);
  li.dataset.motionId = mo.motion_id;
  $(".rank", li).textContent = `#${mo.rank}`;
  $(".name", li).textContent = mo.name;
  $(".label", li).textContent = mo.label ? `“${mo.label}”` : "";
  $(".score", li).textContent = fmt(mo.score);
  $(".p_se", li).textContent = fmt(mo.p_se);
  $(".r", li).textContent = fmt(mo.r);
  $(".found", li).textContent = `found ${fmt(mo.start_s, 2)}–${fmt(mo.end_s, 2)} s`;
  $(".source", li).textContent = `source: ${mo.source} · motion ${mo.motion_id}`;

  // The exported span follows the in/out handles.
  const onSpan = (a, b) => {
    li.dataset.inS = a.toFixed(9);
    li.dataset.outS = b.toFixed(9);
    $(".span-s", li).textContent = `${fmt(a, 2)}–${fmt(b, 2)} s`;
    $(".of", li).textContent = `(${fmt(b - a, 2)} s of a ${fmt(pv.duration, 1)} s motion)`;
    for (const f of FORMATS) $(`.dl-${f}`, li).href = clipUrl(mo.motion_id, a, b, f);
    // Motions imported from one BVH file can also be cut from that file, on its own skeleton.
    if (/\.bvh(\.gz)?$/i.test(mo.path || "")) {
      const src = $(".dl-source", li);
      src.hidden = false;
      src.href = `${clipUrl(mo.motion_id, a, b, "bvh")}&skeleton=source`;
    }
  };
  const els = {
    canvas: $("canvas", li), play: $(".play", li), speed: $(".speed", li), clock: $(".clock", li),
    timeline: $(".timeline", li), window: $(".timeline .window", li), span: $(".timeline .span", li),
    head: $(".timeline .head", li), handleIn: $(".handle.in", li), handleOut: $(".handle.out", li),
    overview: $(".overview", li), overviewView: $(".overview .view", li), overviewSpan: $(".overview .span", li),
    overviewHead: $(".overview .head", li), viewStart: $(".view-start", li), viewEnd: $(".view-end", li),
  };
  const pv = new Player(els, mo, onSpan);
  onSpan(pv.inS, pv.outS);
  $(".reset", li).addEventListener("click", () => pv.resetSpan());
  // More like this: the card's current in/out span is the example.
  $(".like", li).addEventListener("click", () => runLike(mo.motion_id, pv.inS, pv.outS));
  return { li, pv };
}

// A text search: GET /search?q=...
function runSearch(params) {
  return showResults(() => fetchJSON(`/search?${new URLSearchParams(params)}`));
}

// More like this: POST /search with a span of a motion (the example); k and limit from the form.
function runLike(motionId, startS, endS) {
  const { k, limit } = formParams();
  const spec = `${motionId}:${startS.toFixed(3)}-${endS.toFixed(3)}`;
  history.replaceState(null, "", `?${new URLSearchParams({ like: spec, k, limit })}`);
  return showResults(() => postJSON("/search", {
    motion_id: Number(motionId), start_s: Number(startS.toFixed(9)), end_s: Number(endS.toFixed(9)),
    k: Number(k), limit: Number(limit),
  }));
}

async function showResults(request) {
  const seq = ++searchSeq;
  const status = $("#status");
  const list = $("#results");
  status.className = "busy";
  status.textContent = "searching …";
  $("#go").disabled = true;
  const t0 = performance.now();
  try {
    const res = await request();
    if (seq !== searchSeq) return;
    if (observer) observer.disconnect();
    for (const pv of previews) pv.dispose();
    previews = [];
    list.replaceChildren();
    for (const mo of res.moments) {
      const { li, pv } = renderRow(mo);
      list.appendChild(li);
      previews.push(pv);
      if (observer) observer.observe(pv.els.canvas);
      pv.message("loading skeleton …");
      getMotion(mo.motion_id).then(
        (m) => { if (seq === searchSeq) pv.setMotion(m); },
        (err) => pv.message(`preview unavailable: ${err.message}`),
      );
    }
    const ms = Math.round(performance.now() - t0);
    status.className = "ok";
    const how = res.like ? `k=${res.k}, by span similarity` : `k=${res.k}, λ=${res.lam}, localized ${res.localized}`;
    status.textContent = res.moments.length
      ? `${res.moments.length} moments for “${res.query}” · ${ms} ms · ${how}`
      : `no moments for “${res.query}”`;
  } catch (err) {
    if (seq !== searchSeq) return;
    status.className = "error";
    status.textContent = `error: ${err.message}`;
  } finally {
    if (seq === searchSeq) $("#go").disabled = false;
  }
}

// ------------------------------------------------------------------ animation loop
let lastMs = null;
function loop(nowMs) {
  const dt = lastMs === null ? 0 : Math.min(0.1, (nowMs - lastMs) / 1000);
  lastMs = nowMs;
  for (const pv of previews) {
    try {
      pv.tick(dt);
    } catch (err) {
      console.error("preview", err);
    }
  }
  requestAnimationFrame(loop);
}

const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      const pv = previews.find((p) => p.els.canvas === e.target);
      if (pv) { pv.visible = e.isIntersecting; pv.dirty = true; }
    }
  }, { rootMargin: "100px" })
  : null;

// ------------------------------------------------------------------ form
function formParams() {
  return { q: $("#q").value, k: $("#k").value || "200", limit: $("#limit").value || "10", lam: $("#lam").value || "5" };
}

$("#search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const params = formParams();
  if (!params.q.trim()) {
    $("#status").className = "error";
    $("#status").textContent = "type what the motion should show, e.g. “kung fu pose”";
    return;
  }
  history.replaceState(null, "", `?${new URLSearchParams(params)}`);
  runSearch(params);
});

// For the console and the browser test.
window.runSearch = runSearch;
window.runLike = runLike;
Object.defineProperty(window, "previews", { get: () => previews });

// A URL like /?q=kung+fu+pose&k=200 searches on load; /?like=12:1.000-4.000 is "more like this".
(function init() {
  const u = new URLSearchParams(location.search);
  for (const key of ["q", "k", "limit", "lam"]) if (u.has(key)) $(`#${key}`).value = u.get(key);
  const like = /^(\d+):([\d.]+)-([\d.]+)$/.exec(u.get("like") || "");
  if (like) runLike(Number(like[1]), Number(like[2]), Number(like[3]));
  else if (u.get("q") && u.get("q").trim()) runSearch(formParams());
  requestAnimationFrame(loop);
})();
