// The 3D preview of one result: a three.js skeleton (bones as instanced cylinders, joints as spheres) driven
// by a frame clock over the motion's joints from `GET /motions/{id}?joints=true` (y-up metres), with orbit
// controls, play/pause, speed, a scrubber, and in/out handles on a timeline of the whole motion. It loops
// [in - 1 s, out + 1 s]: orange inside the span, grey in the context.
//
// Every preview draws through ONE shared WebGL renderer into its own 2D canvas (browsers cap the number of
// live WebGL contexts at ~16, a result list can be longer), and only while it is on screen.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";

export const CONTEXT_S = 1.0;     // looped context before and after the span
const CAM_DIST_M = 3.1;
const CAM_ELEV_RAD = 0.32;
const CAM_HEIGHT_M = 0.85;        // look-at height above the floor
const BONE_RADIUS_M = 0.022;
const JOINT_RADIUS_M = 0.028;
const HEAD_RADIUS_M = 0.09;
const HEAD = 15;
const LEFT = new Set([1, 4, 7, 10, 13, 16, 18, 20]);
const RIGHT = new Set([2, 5, 8, 11, 14, 17, 19, 21]);
const PALETTE = {
  in: { left: 0xfb923c, right: 0xea580c, mid: 0xf97316, joint: 0xfff7ed },
  out: { left: 0x94a3b8, right: 0x64748b, mid: 0x7c8799, joint: 0xe2e8f0 },
};
const BACKGROUND = 0x111827;
const SPEEDS = [0.25, 0.5, 1, 2];
const VIEW_PAD_S = 2.0;           // the zoomed timeline shows at least this much around the span

let renderer = null;              // the shared WebGLRenderer (null: not made yet; false: WebGL unavailable)
const boneGeometry = new THREE.CylinderGeometry(1, 1, 1, 10, 1);  // unit radius and height, along y
const jointGeometry = new THREE.SphereGeometry(1, 14, 10);
const shadowGeometry = new THREE.CircleGeometry(0.35, 32).rotateX(-Math.PI / 2);

function sharedRenderer() {
  if (renderer === null) {
    try {
      renderer = new THREE.WebGLRenderer({ antialias: false, alpha: false, preserveDrawingBuffer: false });
      renderer.setPixelRatio(1);  // sizes below are device pixels already
    } catch (err) {
      console.warn("3D preview: WebGL unavailable:", err);
      renderer = false;
    }
  }
  return renderer;
}

export function webglAvailable() {
  return Boolean(sharedRenderer());
}

// Joints as a Float32Array plus a smoothed root track (the camera follows the body).
export function prepareMotion(m) {
  const j = m.joints;
  const data = Float32Array.from(j.data);
  const nJ = j.n_joints, n = j.n_frames;
  let floor = Infinity;
  for (let i = 1; i < data.length; i += 3) floor = Math.min(floor, data[i]);
  if (!Number.isFinite(floor)) floor = 0;
  const half = Math.max(1, Math.round(j.fps * 0.75));  // smoothed over 1.5 s
  const track = new Float32Array(2 * n);
  const cx = new Float64Array(n + 1), cz = new Float64Array(n + 1);
  for (let f = 0; f < n; f++) {
    cx[f + 1] = cx[f] + data[f * nJ * 3];
    cz[f + 1] = cz[f] + data[f * nJ * 3 + 2];
  }
  for (let f = 0; f < n; f++) {
    const a = Math.max(0, f - half), b = Math.min(n, f + half + 1);
    track[2 * f] = (cx[b] - cx[a]) / (b - a);
    track[2 * f + 1] = (cz[b] - cz[a]) / (b - a);
  }
  return { ...m, frames: data, nJ, n, previewFps: j.fps, parents: j.parents, floor, track };
}

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

// One card's player. `els`: {canvas, play, speed, clock, timeline, window, span, head, handleIn, handleOut,
// overview, overviewView, overviewSpan, overviewHead, viewStart, viewEnd}.
// `moment`: {start_s, end_s, duration_s, rank}. `onSpan(in_s, out_s)` is called whenever the span changes.
export class Player {
  constructor(els, moment, onSpan) {
    this.els = els;
    this.moment = moment;
    this.onSpan = onSpan;
    this.motion = null;
    this.visible = true;
    this.playing = true;
    this.speed = 1;
    this.duration = Math.max(moment.duration_s, moment.end_s, 1e-6);
    this.fps = null;             // the stored motion's fps (export frames); known once the motion is loaded
    this.inS = moment.start_s;
    this.outS = moment.end_s;
    this.t = Math.max(0, this.inS - CONTEXT_S);
    this.frame = -1;             // preview frame shown last
    this.ctx = els.canvas.getContext("2d");
    this.phase = 0.35 * (moment.rank || 0);
    this._wireControls();
    this.refit();
  }

  // ------------------------------------------------------------ span
  get window() {
    return [Math.max(0, this.inS - CONTEXT_S), Math.min(this.duration, this.outS + CONTEXT_S)];
  }

  // Frame boundaries of the stored motion that the clip endpoint would cut for [a, b) (floor / ceil).
  snap(a, b) {
    if (!this.fps) return [a, b];
    const eps = 1e-6, n = Math.round(this.duration * this.fps);
    const f0 = Math.max(0, Math.floor(a * this.fps + eps));
    const f1 = Math.min(n, Math.ceil(b * this.fps - eps));
    return [f0 / this.fps, f1 / this.fps];
  }

  minSpan() {
    return this.fps ? 2 / this.fps : 0.1;  // the clip endpoint needs >= 2 frames
  }

  setSpan(inS, outS, which = null) {
    const min = this.minSpan();
    let a = clamp(inS, 0, this.duration), b = clamp(outS, 0, this.duration);
    if (this.fps) { a = Math.round(a * this.fps) / this.fps; b = Math.round(b * this.fps) / this.fps; }
    if (b - a < min - 1e-9) {
      if (which === "out") b = Math.min(this.duration, a + min);
      else a = Math.max(0, b - min);
      if (b - a < min - 1e-9) { a = 0; b = Math.min(this.duration, min); }
    }
    this.inS = a;
    this.outS = b;
    this.dirty = true;
    this.layout();
    if (this.onSpan) this.onSpan(this.inS, this.outS);
  }

  resetSpan() {
    const [a, b] = this.snap(this.moment.start_s, this.moment.end_s);
    this.setSpan(a, b);
    this.t = this.window[0];
    this.refit();
  }

  // ------------------------------------------------------------ motion
  setMotion(m) {
    this.motion = m;
    this.fps = m.fps;
    this.duration = Math.max(m.duration_s, 1e-6);
    this._buildScene();
    this.resetSpan();
    this.els.canvas.closest(".moment")?.setAttribute("data-ready", "");
  }

  _buildScene() {
    const m = this.motion;
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(BACKGROUND);
    scene.fog = new THREE.Fog(BACKGROUND, 4.5, 9);
    scene.add(new THREE.HemisphereLight(0xf1f5f9, 0x334155, 1.6));
    const sun = new THREE.DirectionalLight(0xffffff, 1.8);
    sun.position.set(2, 4, 3);
    scene.add(sun);
    this.grid = new THREE.GridHelper(12, 24, 0x475569, 0x334155);
    this.grid.position.y = m.floor;
    scene.add(this.grid);
    this.shadow = new THREE.Mesh(shadowGeometry,
      new THREE.MeshBasicMaterial({ color: 0x000000, transparent: true, opacity: 0.35, depthWrite: false }));
    this.shadow.position.y = m.floor + 0.002;
    scene.add(this.shadow);
    const material = new THREE.MeshLambertMaterial({ color: 0xffffff });
    this.bones = new THREE.InstancedMesh(boneGeometry, material, m.nJ - 1);
    this.joints = new THREE.InstancedMesh(jointGeometry, material, m.nJ);
    this.bones.frustumCulled = false;
    this.joints.frustumCulled = false;
    scene.add(this.bones, this.joints);
    this.scene = scene;
    this.palette = null;

    const canvas = this.els.canvas;
    this.camera = new THREE.PerspectiveCamera(40, (canvas.clientWidth || 300) / (canvas.clientHeight || 200), 0.05, 60);
    const target = this._target(0);
    const az = Math.PI / 4 + this.phase, ce = Math.cos(CAM_ELEV_RAD);
    this.camera.position.set(target.x + CAM_DIST_M * Math.sin(az) * ce, target.y + CAM_DIST_M * Math.sin(CAM_ELEV_RAD),
                             target.z + CAM_DIST_M * Math.cos(az) * ce);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.target.copy(target);
    this.controls.enablePan = false;
    this.controls.minDistance = 0.8;
    this.controls.maxDistance = 12;
    // A plain wheel scrolls the result list; Ctrl (or Cmd) + wheel zooms. This listener runs in the capture
    // phase on the canvas's parent, before OrbitControls' own wheel listener on the canvas decides.
    this.controls.enableZoom = false;
    canvas.parentElement.addEventListener("wheel", (e) => {
      if (e.target === canvas) this.controls.enableZoom = e.ctrlKey || e.metaKey;
    }, { capture: true, passive: true });
    this.controls.update();
    this.controls.addEventListener("change", () => { this.dirty = true; });
    this.dirty = true;
  }

  _target(f) {
    const m = this.motion;
    return new THREE.Vector3(m.track[2 * f], m.floor + CAM_HEIGHT_M, m.track[2 * f + 1]);
  }

  _setPalette(key) {
    if (this.palette === key) return;
    this.palette = key;
    const pal = PALETTE[key], c = new THREE.Color();
    for (let j = 1; j < this.motion.nJ; j++) {
      this.bones.setColorAt(j - 1, c.setHex(LEFT.has(j) ? pal.left : RIGHT.has(j) ? pal.right : pal.mid));
    }
    for (let j = 0; j < this.motion.nJ; j++) this.joints.setColorAt(j, c.setHex(j === HEAD ? pal.mid : pal.joint));
    this.bones.instanceColor.needsUpdate = true;
    this.joints.instanceColor.needsUpdate = true;
  }

  // Pose at motion time t (linear between preview frames) into the instanced meshes.
  _pose(t) {
    const m = this.motion, nJ = m.nJ;
    const x = clamp(t * m.previewFps, 0, m.n - 1);
    const f0 = Math.floor(x), f1 = Math.min(m.n - 1, f0 + 1), a = x - f0;
    const p = new Float32Array(nJ * 3);
    for (let i = 0; i < nJ * 3; i++) p[i] = (1 - a) * m.frames[f0 * nJ * 3 + i] + a * m.frames[f1 * nJ * 3 + i];
    const mat = new THREE.Matrix4(), q = new THREE.Quaternion(), s = new THREE.Vector3();
    const up = new THREE.Vector3(0, 1, 0), pa = new THREE.Vector3(), pb = new THREE.Vector3();
    const mid = new THREE.Vector3(), dir = new THREE.Vector3();
    for (let j = 1; j < nJ; j++) {
      const k = m.parents[j];
      pa.fromArray(p, 3 * k);
      pb.fromArray(p, 3 * j);
      dir.subVectors(pb, pa);
      const len = dir.length();
      q.setFromUnitVectors(up, len > 1e-9 ? dir.divideScalar(len) : up);
      s.set(BONE_RADIUS_M, len, BONE_RADIUS_M);
      mat.compose(mid.addVectors(pa, pb).multiplyScalar(0.5), q, s);
      this.bones.setMatrixAt(j - 1, mat);
    }
    q.identity();
    for (let j = 0; j < nJ; j++) {
      const r = j === HEAD ? HEAD_RADIUS_M : JOINT_RADIUS_M;
      mat.compose(pa.fromArray(p, 3 * j), q, s.set(r, r, r));
      this.joints.setMatrixAt(j, mat);
    }
    this.bones.instanceMatrix.needsUpdate = true;
    this.joints.instanceMatrix.needsUpdate = true;
    this.shadow.position.x = p[0];
    this.shadow.position.z = p[2];
    return Math.round(x);
  }

  // ------------------------------------------------------------ clock + drawing
  tick(dtS) {
    if (!this.motion || !this.scene) return;
    const [w0, w1] = this.window;
    if (this.playing) {
      // Loop [w0, w1); a playhead scrubbed past w1 plays on to the motion's end, then loops.
      const prev = this.t;
      this.t += dtS * this.speed;
      if ((prev < w1 && this.t >= w1) || this.t >= this.duration) this.t = w0;
    }
    this.t = clamp(this.t, 0, this.duration);
    // Paused and untouched: the last picture stands (no render).
    if (this.visible && (this.playing || this.dirty)) this.draw();
    this.layoutHead();
  }

  draw() {
    const gl = sharedRenderer();
    const canvas = this.els.canvas, ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300, h = canvas.clientHeight || 200;
    const W = Math.round(w * dpr), H = Math.round(h * dpr);
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    if (!gl) { this.message("3D preview needs WebGL"); return; }
    this.dirty = false;
    const t = this.t, inSpan = t >= this.inS && t <= this.outS;
    this._setPalette(inSpan ? "in" : "out");
    this.frame = this._pose(t);
    // The camera follows the (smoothed) body; the orbit offset the user chose is kept.
    const target = this._target(this.frame), delta = target.clone().sub(this.controls.target);
    this.camera.position.add(delta);
    this.controls.target.copy(target);
    this.controls.update();
    this.grid.position.x = Math.round(target.x / 0.5) * 0.5;
    this.grid.position.z = Math.round(target.z / 0.5) * 0.5;
    if (this.camera.aspect !== w / h) { this.camera.aspect = w / h; this.camera.updateProjectionMatrix(); }
    const size = gl.getSize(new THREE.Vector2());
    if (size.x !== W || size.y !== H) gl.setSize(W, H, false);
    gl.render(this.scene, this.camera);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(gl.domElement, 0, 0);
    // overlay: time, and whether it is inside the span
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = "12px ui-monospace, SFMono-Regular, Menlo, monospace";
    ctx.fillStyle = "#cbd5e1";
    ctx.fillText(`${t.toFixed(2)} s`, 8, h - 9);
    if (inSpan) {
      ctx.fillStyle = "#f97316";
      ctx.fillRect(8, 8, 62, 18);
      ctx.fillStyle = "#111827";
      ctx.font = "bold 11px system-ui, sans-serif";
      ctx.fillText("MATCH", 20, 21);
    }
    const li = canvas.closest(".moment");
    if (li) li.dataset.frame = String(this.frame);
  }

  message(text) {
    const canvas = this.els.canvas, ctx = this.ctx, dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300, h = canvas.clientHeight || 200;
    if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0f172a";
    ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = "#94a3b8";
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(text, w / 2, h / 2);
    ctx.textAlign = "left";
  }

  // ------------------------------------------------------------ timeline
  // The timeline with the handles is zoomed on the span (plus VIEW_PAD_S or half the span each side),
  // refitted when a drag ends; the overview bar above it shows the whole motion.
  refit() {
    const pad = Math.max(VIEW_PAD_S, 0.5 * (this.outS - this.inS));
    this.view = [Math.max(0, this.inS - pad), Math.min(this.duration, this.outS + pad)];
    this.layout();
  }

  layout() {
    const [v0, v1] = this.view || (this.view = [0, this.duration]);
    const pct = (x) => `${(100 * (x - v0)) / Math.max(1e-9, v1 - v0)}%`;
    const all = (x) => `${(100 * x) / this.duration}%`;
    const [w0, w1] = this.window;
    const cut = (a, b) => [Math.max(a, v0), Math.min(b, v1)];
    const [c0, c1] = cut(w0, w1), [d0, d1] = cut(this.inS, this.outS);
    Object.assign(this.els.window.style, { left: pct(c0), width: pct(v0 + Math.max(0, c1 - c0)) });
    Object.assign(this.els.span.style, { left: pct(d0), width: pct(v0 + Math.max(0, d1 - d0)) });
    Object.assign(this.els.overviewView.style, { left: all(v0), width: all(v1 - v0) });
    Object.assign(this.els.overviewSpan.style, { left: all(this.inS), width: all(this.outS - this.inS) });
    this.els.viewStart.textContent = `${v0.toFixed(1)} s`;
    this.els.viewEnd.textContent = `${v1.toFixed(1)} s`;
    this.els.handleIn.style.left = pct(this.inS);
    this.els.handleOut.style.left = pct(this.outS);
    for (const [el, v] of [[this.els.handleIn, this.inS], [this.els.handleOut, this.outS]]) {
      el.setAttribute("aria-valuemin", "0");
      el.setAttribute("aria-valuemax", this.duration.toFixed(3));
      el.setAttribute("aria-valuenow", v.toFixed(3));
      el.setAttribute("aria-valuetext", `${v.toFixed(2)} s`);
    }
    this.layoutHead();
  }

  layoutHead() {
    const [v0, v1] = this.view || [0, this.duration];
    const inView = this.t >= v0 && this.t <= v1;
    this.els.head.style.display = inView ? "" : "none";
    if (inView) this.els.head.style.left = `${(100 * (this.t - v0)) / Math.max(1e-9, v1 - v0)}%`;
    this.els.overviewHead.style.left = `${(100 * this.t) / this.duration}%`;
    this.els.head.classList.toggle("in", this.t >= this.inS && this.t <= this.outS);
    this.els.clock.textContent = `${this.t.toFixed(2)} s`;
  }

  _timeAt(clientX, el = this.els.timeline) {
    const r = el.getBoundingClientRect();
    const [v0, v1] = el === this.els.timeline ? this.view : [0, this.duration];
    return v0 + clamp((clientX - r.left) / Math.max(1, r.width), 0, 1) * (v1 - v0);
  }

  _wireControls() {
    const { play, speed, timeline, handleIn, handleOut } = this.els;
    play.addEventListener("click", () => this.setPlaying(!this.playing));
    speed.replaceChildren(...SPEEDS.map((s) => new Option(`${s}×`, String(s), s === 1, s === 1)));
    speed.addEventListener("change", () => { this.speed = Number(speed.value) || 1; });
    this.setPlaying(true);

    // Scrubbing: press and drag on the timeline (outside the handles) or on the overview moves the playhead.
    for (const bar of [timeline, this.els.overview]) {
      bar.addEventListener("pointerdown", (ev) => {
        if (ev.target === handleIn || ev.target === handleOut || !this.motion) return;
        ev.preventDefault();
        bar.setPointerCapture(ev.pointerId);
        const move = (e) => { this.t = this._timeAt(e.clientX, bar); this.dirty = true; this.layoutHead(); };
        move(ev);
        const up = () => {
          bar.removeEventListener("pointermove", move);
          bar.removeEventListener("pointerup", up);
          bar.removeEventListener("pointercancel", up);
        };
        bar.addEventListener("pointermove", move);
        bar.addEventListener("pointerup", up);
        bar.addEventListener("pointercancel", up);
      });
    }

    // In/out handles: drag (snapped to the stored motion's frames), or arrow keys (1 frame; shift: 10).
    for (const [el, which] of [[handleIn, "in"], [handleOut, "out"]]) {
      el.addEventListener("pointerdown", (ev) => {
        if (!this.motion) return;
        ev.preventDefault();
        ev.stopPropagation();
        el.setPointerCapture(ev.pointerId);
        el.classList.add("dragging");
        const move = (e) => {
          const x = this._timeAt(e.clientX);
          if (which === "in") this.setSpan(Math.min(x, this.outS - this.minSpan()), this.outS, "in");
          else this.setSpan(this.inS, Math.max(x, this.inS + this.minSpan()), "out");
        };
        const up = () => {
          el.classList.remove("dragging");
          el.removeEventListener("pointermove", move);
          el.removeEventListener("pointerup", up);
          el.removeEventListener("pointercancel", up);
          this.t = this.window[0];  // replay the new span from its context
          this.refit();
        };
        el.addEventListener("pointermove", move);
        el.addEventListener("pointerup", up);
        el.addEventListener("pointercancel", up);
      });
      el.addEventListener("keydown", (ev) => {
        if (!this.motion || (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight")) return;
        ev.preventDefault();
        const d = (ev.key === "ArrowLeft" ? -1 : 1) * (ev.shiftKey ? 10 : 1) / this.fps;
        if (which === "in") this.setSpan(Math.min(this.inS + d, this.outS - this.minSpan()), this.outS, "in");
        else this.setSpan(this.inS, Math.max(this.outS + d, this.inS + this.minSpan()), "out");
        if (this.inS < this.view[0] || this.outS > this.view[1]) this.refit();
      });
    }
  }

  // Free the GPU side (the shared renderer stays) when the card goes away.
  dispose() {
    if (!this.scene) return;
    this.controls.dispose();
    this.scene.traverse((o) => {
      if (o.isInstancedMesh) o.dispose();
      if (o.material) o.material.dispose();
      if (o.isGridHelper) o.geometry.dispose();
    });
    this.scene = null;
    this.motion = null;
  }

  setPlaying(on) {
    this.playing = on;
    this.els.play.textContent = on ? "❚❚" : "▶";
    this.els.play.setAttribute("aria-label", on ? "pause" : "play");
    this.els.play.setAttribute("aria-pressed", on ? "false" : "true");
  }
}
