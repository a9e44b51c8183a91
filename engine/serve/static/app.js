// The web page of `engine serve`: search form -> /search -> ranked moments, each with an animated
// skeleton preview (22 SMPL joints, y-up metres, hand-written perspective projection) looping the
// moment with ~1 s of context, a timeline bar and clip downloads. No framework, no build step.
"use strict";

const CONTEXT_S = 1.0;          // looped context before and after the moment
const ORBIT_PERIOD_S = 40;      // one camera turn
const CAM_DIST_M = 3.1;
const HEAD_RADIUS_M = 0.09;
const JOINT_RADIUS_M = 0.022;
const CAM_ELEV_RAD = 0.32;
const CAM_HEIGHT_M = 0.85;      // look-at height above the floor
const NEAR_M = 0.1;
const GRID_HALF_M = 4;
const LEFT = new Set([1, 4, 7, 10, 13, 16, 18, 20]);
const RIGHT = new Set([2, 5, 8, 11, 14, 17, 19, 21]);
const HEAD = 15;
const COLORS = {
  in: { left: "#fb923c", right: "#ea580c", mid: "#f97316", joint: "#fff7ed" },
  out: { left: "#94a3b8", right: "#64748b", mid: "#7c8799", joint: "#e2e8f0" },
};

const $ = (sel, root = document) => root.querySelector(sel);
const motionCache = new Map();  // motion_id -> Promise<motion with joints>
let previews = [];              // what the animation loop draws
let searchSeq = 0;

// ------------------------------------------------------------------ data
function fetchJSON(url) {
  return fetch(url).then(async (resp) => {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    if (!resp.ok) {
      const msg = body && body.detail ? body.detail : `${resp.status} ${resp.statusText}`;
      throw new Error(typeof msg === "string" ? msg : JSON.stringify(msg));
    }
    return body;
  });
}

function getMotion(id) {
  if (!motionCache.has(id)) {
    const p = fetchJSON(`/motions/${id}?joints=true`).then(prepareMotion);
    p.catch(() => motionCache.delete(id));
    motionCache.set(id, p);
  }
  return motionCache.get(id);
}

// Joints as a Float32Array plus what every frame's drawing needs: floor height, a smoothed root track.
function prepareMotion(m) {
  const j = m.joints;
  const data = Float32Array.from(j.data);
  const nJ = j.n_joints, n = j.n_frames;
  let floor = Infinity;
  for (let i = 1; i < data.length; i += 3) floor = Math.min(floor, data[i]);
  if (!Number.isFinite(floor)) floor = 0;
  const half = Math.max(1, Math.round(j.fps * 0.75));  // the camera follows the root, smoothed over 1.5 s
  const track = new Float32Array(2 * n);
  const cx = new Float64Array(n + 1), cz = new Float64Array(n + 1);  // prefix sums of the root's x, z
  for (let f = 0; f < n; f++) {
    cx[f + 1] = cx[f] + data[f * nJ * 3];
    cz[f + 1] = cz[f] + data[f * nJ * 3 + 2];
  }
  for (let f = 0; f < n; f++) {
    const a = Math.max(0, f - half), b = Math.min(n, f + half + 1);
    track[2 * f] = (cx[b] - cx[a]) / (b - a);
    track[2 * f + 1] = (cz[b] - cz[a]) / (b - a);
  }
  return { ...m, frames: data, nJ, n, fps: j.fps, parents: j.parents, floor, track };
}

// ------------------------------------------------------------------ camera
function camera(target, azimuth, w, h) {
  const ce = Math.cos(CAM_ELEV_RAD);
  const eye = [target[0] + CAM_DIST_M * Math.sin(azimuth) * ce,
               target[1] + CAM_DIST_M * Math.sin(CAM_ELEV_RAD),
               target[2] + CAM_DIST_M * Math.cos(azimuth) * ce];
  const f = norm(sub(target, eye));
  const r = norm(cross(f, [0, 1, 0]));
  const u = cross(r, f);
  const focal = 1.2 * h;
  return { eye, f, r, u, focal, cx: w / 2, cy: h * 0.55 };
}

function toCam(cam, p) {  // world -> camera space (x right, y up, z forward)
  const d = [p[0] - cam.eye[0], p[1] - cam.eye[1], p[2] - cam.eye[2]];
  return [dot(d, cam.r), dot(d, cam.u), dot(d, cam.f)];
}

function project(cam, c) {  // camera space -> pixels
  return [cam.cx + cam.focal * c[0] / c[2], cam.cy - cam.focal * c[1] / c[2]];
}

// A world-space segment as pixels, clipped at the near plane; null when wholly behind the camera.
function segment(cam, a, b) {
  let ca = toCam(cam, a), cb = toCam(cam, b);
  if (ca[2] < NEAR_M && cb[2] < NEAR_M) return null;
  if (ca[2] < NEAR_M || cb[2] < NEAR_M) {
    const t = (NEAR_M - ca[2]) / (cb[2] - ca[2]);
    const c = [ca[0] + t * (cb[0] - ca[0]), ca[1] + t * (cb[1] - ca[1]), NEAR_M];
    if (ca[2] < NEAR_M) ca = c; else cb = c;
  }
  return [project(cam, ca), project(cam, cb), (ca[2] + cb[2]) / 2];
}

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a) => { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; };

// ------------------------------------------------------------------ drawing
function sizeCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 320, h = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  return { w, h, dpr };
}

function drawMessage(pv, text) {
  const { w, h, dpr } = sizeCanvas(pv.canvas);
  const ctx = pv.ctx;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#0f172a";
  ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = "#94a3b8";
  ctx.font = "13px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.fillText(text, w / 2, h / 2);
  ctx.textAlign = "left";
}

function joint(m, f, j) {
  const o = (f * m.nJ + j) * 3;
  return [m.frames[o], m.frames[o + 1], m.frames[o + 2]];
}

function drawPreview(pv, nowMs) {
  const m = pv.motion, mo = pv.moment;
  const { w, h, dpr } = sizeCanvas(pv.canvas);
  const ctx = pv.ctx;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);

  // Time inside the looped window [start - 1 s, end + 1 s], played in real time.
  const span = pv.w1 - pv.w0;
  const t = pv.w0 + (span > 0 ? ((nowMs - pv.t0) / 1000) % span : 0);
  const f = Math.min(m.n - 1, Math.max(0, Math.round(t * m.fps)));
  const inSpan = t >= mo.start_s && t <= mo.end_s;

  const target = [m.track[2 * f], m.floor + CAM_HEIGHT_M, m.track[2 * f + 1]];
  const az = Math.PI / 4 + pv.phase + (2 * Math.PI * nowMs) / (1000 * ORBIT_PERIOD_S);
  const cam = camera(target, az, w, h);

  // background
  const g = ctx.createLinearGradient(0, 0, 0, h);
  g.addColorStop(0, "#1e293b");
  g.addColorStop(1, "#0b1220");
  ctx.fillStyle = g;
  ctx.fillRect(0, 0, w, h);

  // ground grid: world-aligned 0.5 m lines around the target (they scroll when the body travels)
  const step = 0.5, y0 = m.floor;
  const gx = Math.round(target[0] / step) * step, gz = Math.round(target[2] / step) * step;
  ctx.lineWidth = 1;
  for (let i = -GRID_HALF_M; i <= GRID_HALF_M; i += step) {
    for (let k = -GRID_HALF_M; k < GRID_HALF_M; k += step) {
      const lines = [[[gx + i, y0, gz + k], [gx + i, y0, gz + k + step]],
                     [[gx + k, y0, gz + i], [gx + k + step, y0, gz + i]]];
      for (const [a, b] of lines) {
        const mx = (a[0] + b[0]) / 2 - target[0], mz = (a[2] + b[2]) / 2 - target[2];
        const alpha = 0.35 * Math.max(0, 1 - Math.hypot(mx, mz) / GRID_HALF_M);
        if (alpha <= 0.01) continue;
        const s = segment(cam, a, b);
        if (!s) continue;
        ctx.strokeStyle = `rgba(148, 163, 184, ${alpha.toFixed(3)})`;
        ctx.beginPath();
        ctx.moveTo(s[0][0], s[0][1]);
        ctx.lineTo(s[1][0], s[1][1]);
        ctx.stroke();
      }
    }
  }

  // shadow: the bones flattened onto the floor
  ctx.strokeStyle = "rgba(0, 0, 0, 0.35)";
  ctx.lineWidth = 4;
  ctx.lineCap = "round";
  for (let j = 1; j < m.nJ; j++) {
    const a = joint(m, f, m.parents[j]), b = joint(m, f, j);
    const s = segment(cam, [a[0], y0, a[2]], [b[0], y0, b[2]]);
    if (!s) continue;
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    ctx.lineTo(s[1][0], s[1][1]);
    ctx.stroke();
  }

  // bones, far to near
  const pal = inSpan ? COLORS.in : COLORS.out;
  const bones = [];
  for (let j = 1; j < m.nJ; j++) {
    const s = segment(cam, joint(m, f, m.parents[j]), joint(m, f, j));
    if (s) bones.push([s, j]);
  }
  bones.sort((x, y) => y[0][2] - x[0][2]);
  for (const [s, j] of bones) {
    ctx.strokeStyle = LEFT.has(j) ? pal.left : RIGHT.has(j) ? pal.right : pal.mid;
    ctx.lineWidth = Math.max(1.5, Math.min(7, (cam.focal * 0.035) / s[2]));
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    ctx.lineTo(s[1][0], s[1][1]);
    ctx.stroke();
  }
  ctx.fillStyle = pal.joint;
  for (let j = 0; j < m.nJ; j++) {
    const c = toCam(cam, joint(m, f, j));
    if (c[2] < NEAR_M) continue;
    const p = project(cam, c);
    const r = Math.max(1.5, (cam.focal * (j === HEAD ? HEAD_RADIUS_M : JOINT_RADIUS_M)) / c[2]);
    ctx.beginPath();
    ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
    if (j === HEAD) {
      ctx.fillStyle = pal.mid;
      ctx.fill();
      ctx.fillStyle = pal.joint;
    } else {
      ctx.fill();
    }
  }

  // overlay: time and whether it is inside the matched span
  ctx.font = "12px ui-monospace, SFMono-Regular, Menlo, monospace";
  ctx.fillStyle = "#cbd5e1";
  ctx.fillText(`${t.toFixed(1)} s`, 8, h - 9);
  if (inSpan) {
    ctx.fillStyle = "#f97316";
    ctx.fillRect(8, 8, 62, 18);
    ctx.fillStyle = "#111827";
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.fillText("MATCH", 20, 21);
  }

  // timeline playhead
  pv.head.style.left = `${(100 * t) / pv.duration}%`;
  pv.head.classList.toggle("in", inSpan);
}

function loop(nowMs) {
  for (const pv of previews) {
    if (pv.motion && pv.visible) drawPreview(pv, nowMs);
  }
  requestAnimationFrame(loop);
}

const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      const pv = previews.find((p) => p.canvas === e.target);
      if (pv) pv.visible = e.isIntersecting;
    }
  }, { rootMargin: "100px" })
  : null;

// ------------------------------------------------------------------ results
function fmt(x, digits = 3) {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

function clipUrl(mo, format) {
  const p = new URLSearchParams({ start_s: mo.start_s.toFixed(3), end_s: mo.end_s.toFixed(3), format });
  return `/motions/${mo.motion_id}/clip?${p}`;
}

function renderRow(mo) {
  const li = $("#row-template").content.firstElementChild.cloneNode(true);
  li.dataset.motionId = mo.motion_id;
  $(".rank", li).textContent = `#${mo.rank}`;
  $(".name", li).textContent = mo.name;
  $(".label", li).textContent = mo.label ? `“${mo.label}”` : "";
  $(".score", li).textContent = fmt(mo.score);
  $(".p_se", li).textContent = fmt(mo.p_se);
  $(".r", li).textContent = fmt(mo.r);
  $(".span-s", li).textContent = `${fmt(mo.start_s, 2)}–${fmt(mo.end_s, 2)} s`;
  $(".of", li).textContent = `(${fmt(mo.end_s - mo.start_s, 1)} s of a ${fmt(mo.duration_s, 1)} s motion)`;
  $(".source", li).textContent = `source: ${mo.source} · motion ${mo.motion_id}`;
  $(".dl-bvh", li).href = clipUrl(mo, "bvh");
  $(".dl-npy", li).href = clipUrl(mo, "npy");
  $(".dl-json", li).href = clipUrl(mo, "json");

  const duration = Math.max(mo.duration_s, mo.end_s, 1e-6);
  const w0 = Math.max(0, mo.start_s - CONTEXT_S), w1 = Math.min(duration, mo.end_s + CONTEXT_S);
  const pct = (x) => `${(100 * x) / duration}%`;
  Object.assign($(".timeline .window", li).style, { left: pct(w0), width: pct(w1 - w0) });
  Object.assign($(".timeline .span", li).style, { left: pct(mo.start_s), width: pct(mo.end_s - mo.start_s) });

  const canvas = $("canvas", li);
  const pv = {
    canvas, ctx: canvas.getContext("2d"), moment: mo, motion: null, visible: true, duration, w0, w1,
    t0: performance.now(), phase: 0.35 * mo.rank, head: $(".timeline .head", li),
  };
  return { li, pv };
}

async function runSearch(params) {
  const seq = ++searchSeq;
  const status = $("#status");
  const list = $("#results");
  status.className = "busy";
  status.textContent = "searching …";
  $("#go").disabled = true;
  const t0 = performance.now();
  try {
    const res = await fetchJSON(`/search?${new URLSearchParams(params)}`);
    if (seq !== searchSeq) return;
    if (observer) observer.disconnect();
    previews = [];
    list.replaceChildren();
    for (const mo of res.moments) {
      const { li, pv } = renderRow(mo);
      list.appendChild(li);
      previews.push(pv);
      if (observer) observer.observe(pv.canvas);
      drawMessage(pv, "loading skeleton …");
      getMotion(mo.motion_id).then(
        (m) => { pv.motion = m; pv.t0 = performance.now(); },
        (err) => drawMessage(pv, `preview unavailable: ${err.message}`),
      );
    }
    const ms = Math.round(performance.now() - t0);
    status.className = "ok";
    status.textContent = res.moments.length
      ? `${res.moments.length} moments for “${res.query}” · ${ms} ms · k=${res.k}, λ=${res.lam}, localized ${res.localized}`
      : `no moments for “${res.query}”`;
  } catch (err) {
    if (seq !== searchSeq) return;
    status.className = "error";
    status.textContent = `error: ${err.message}`;
  } finally {
    if (seq === searchSeq) $("#go").disabled = false;
  }
}

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

// A URL like /?q=kung+fu+pose&k=200 searches on load.
(function init() {
  const u = new URLSearchParams(location.search);
  for (const key of ["q", "k", "limit", "lam"]) if (u.has(key)) $(`#${key}`).value = u.get(key);
  if (u.get("q") && u.get("q").trim()) runSearch(formParams());
  requestAnimationFrame(loop);
})();
