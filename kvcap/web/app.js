// kvcap page: upload a video, follow its job, then play it with its Korean captions.
// Plain script, no build step and nothing from other hosts. The job id lives in the
// address (#job=…), so a reload or a shared link comes back to the same result.
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = ["upload", "queued", "decode", "shots", "captions", "render"];
const STAGE_TEXT = {
  upload: "올리는 중", queued: "차례를 기다리는 중", decode: "동영상을 읽고 장면을 나누는 중",
  shots: "장면을 나누는 중", captions: "자막을 만드는 중", render: "자막 입힌 동영상을 만드는 중",
};
let limit = null;      // bytes, from /api/config
let current = null;    // the job shown: {id, segments}
let polling = null;

function show(id, visible) { $(id).hidden = !visible; }

function clock(seconds) {
  const s = Math.max(0, seconds);
  const m = Math.floor(s / 60);
  const rest = (s - m * 60).toFixed(1).padStart(4, "0");
  return `${String(m).padStart(2, "0")}:${rest}`;
}

function setError(message) {
  $("error").textContent = message || "";
  show("error", Boolean(message));
}

function setStage(stage, fraction, text) {
  const at = STAGES.indexOf(stage);
  for (const li of $("stages").children) {
    const i = STAGES.indexOf(li.dataset.stage);
    li.classList.toggle("done", i < at);
    li.classList.toggle("active", i === at);
  }
  $("bar").value = fraction;
  $("percent").textContent = `${Math.round(fraction * 100)}%`;
  $("status-text").textContent = text || STAGE_TEXT[stage] || "";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch (e) { /* not JSON */ }
  return `요청이 실패했습니다 (HTTP ${response.status}).`;
}

// ---------------------------------------------------------------- upload

function upload(file) {
  setError(null);
  if (limit !== null && file.size > limit.bytes) {
    setError(`파일이 너무 큽니다 (최대 ${limit.text}).`);
    return;
  }
  show("result", false);
  show("progress", true);
  $("job-name").textContent = file.name;
  setStage("upload", 0);
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();  // fetch() cannot report upload progress
  xhr.open("POST", "/api/jobs");
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setStage("upload", e.loaded / e.total);
  };
  xhr.onload = () => {
    const body = xhr.response || {};
    if (xhr.status === 201) {
      rememberJob(body.id, file.name);
      location.hash = `job=${body.id}`;  // hashchange starts following the job
    } else {
      show("progress", false);
      setError(body.detail || `업로드가 실패했습니다 (HTTP ${xhr.status}).`);
    }
  };
  xhr.onerror = () => {
    show("progress", false);
    setError("업로드가 실패했습니다. 서버에 연결할 수 없습니다.");
  };
  xhr.send(form);
}

const drop = $("drop");
$("file").addEventListener("change", (e) => {
  if (e.target.files.length) upload(e.target.files[0]);
  e.target.value = "";
});
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => {
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});

// ---------------------------------------------------------------- this browser's jobs
// Only ids this browser was given are listed (the server has no list of jobs to hand out).

const MINE = "kvcap.jobs";

function myJobs() {
  try { return JSON.parse(localStorage.getItem(MINE)) || []; } catch (e) { return []; }
}

function rememberJob(id, name) {
  const jobs = myJobs().filter((j) => j.id !== id);
  jobs.unshift({ id, name });
  localStorage.setItem(MINE, JSON.stringify(jobs.slice(0, 20)));
  listMyJobs();
}

function forgetJob(id) {
  localStorage.setItem(MINE, JSON.stringify(myJobs().filter((j) => j.id !== id)));
  listMyJobs();
}

function listMyJobs() {
  const list = $("my-jobs");
  list.replaceChildren();
  for (const job of myJobs()) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `#job=${job.id}`;
    a.textContent = job.name;
    if (location.hash === `#job=${job.id}`) a.setAttribute("aria-current", "page");
    li.append(a);
    list.append(li);
  }
  show("mine", list.children.length > 0);
}

// ---------------------------------------------------------------- following a job

function follow(id, seekTo) {
  clearTimeout(polling);
  setError(null);
  const tick = async () => {
    let response;
    try {
      response = await fetch(`/api/jobs/${encodeURIComponent(id)}`, { cache: "no-store" });
    } catch (e) {
      polling = setTimeout(tick, 2000);  // the server may be restarting
      return;
    }
    if (!response.ok) {
      show("progress", false);
      show("result", false);
      setError(await errorMessage(response));
      if (response.status === 404) forgetJob(id);  // removed after its keeping time
      return;
    }
    const job = await response.json();
    $("job-name").textContent = job.name;
    if (job.status === "done") {
      show("progress", false);
      showResult(job, seekTo);
    } else if (job.status === "failed") {
      show("progress", false);
      setError(job.error.message);
    } else {
      show("result", false);
      show("progress", true);
      const waiting = job.status === "queued";
      const text = waiting && job.queue_position > 1 ? `앞에 ${job.queue_position - 1}개 작업이 있습니다` : null;
      setStage(waiting ? "queued" : job.stage, waiting ? 0 : job.progress, text);
      polling = setTimeout(tick, 500);
    }
  };
  tick();
}

// ---------------------------------------------------------------- result

const video = $("player");

function showResult(job, seekTo) {
  const base = `/api/jobs/${job.id}`;
  const same = current && current.id === job.id;
  current = job;
  show("result", true);
  if (!same) {
    $("ad").checked = false;
    video.src = job.video;
    $("track").src = `${base}/vtt`;
    // audio description: the descriptions track, and a switch to the copy whose sound is it
    const described = Boolean(job.described_video);
    show("ad-toggle", described);
    $("descriptions").src = described ? `${base}/descriptions` : "";
    video.textTracks[0].mode = $("cc").checked ? "showing" : "hidden";
    const list = $("segments");
    list.replaceChildren();
    job.segments.forEach((seg, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const span = document.createElement("span");
      span.className = "span";
      span.textContent = `${clock(seg.start)} – ${clock(seg.end)}`;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = seg.text;
      button.append(span, text);
      if (seg.confidence !== undefined) {  // calibrated: expected share of the caption's nouns that are right
        const sure = document.createElement("span");
        sure.className = "confidence";
        sure.textContent = `확신도 ${Math.round(seg.confidence * 100)}%`;
        button.append(sure);
      }
      button.addEventListener("click", () => seek(seg.start));
      li.dataset.index = i;
      li.append(button);
      list.append(li);
    });
    $("segment-count").textContent = `(${job.segments.length})`;
    // a damaged upload: the rest was captioned; say which part was skipped
    const warnings = job.warnings || [];
    $("warnings").textContent = warnings.length
      ? `영상 일부가 손상되어 그 부분은 건너뛰고 나머지에 자막을 달았습니다 (${warnings.join("; ")}).` : "";
    show("warnings", warnings.length > 0);
    for (const a of $("downloads").querySelectorAll("a")) {
      a.href = `${base}/${a.dataset.kind}?download=1`;
      a.hidden = !(a.dataset.kind in job.downloads);
    }
  }
  if (seekTo !== undefined) seek(seekTo);
  highlight();
}

// the player switches between the original sound and the described one at the same moment
$("ad").addEventListener("change", () => {
  if (!current || !current.described_video) return;
  const at = video.currentTime, playing = !video.paused;
  video.src = $("ad").checked ? current.described_video : current.video;
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = at;
    if (playing) video.play().catch(() => {});
  }, {once: true});
});

function seek(t) {
  video.currentTime = t;
  highlight();
  video.play().catch(() => { /* autoplay may be refused; the position is set */ });
}

function highlight() {
  if (!current) return;
  const t = video.currentTime;
  for (const li of $("segments").children) {
    const seg = current.segments[Number(li.dataset.index)];
    const on = t >= seg.start - 0.001 && t < seg.end;
    li.classList.toggle("current", on);
    if (on) li.setAttribute("aria-current", "true"); else li.removeAttribute("aria-current");
  }
}

video.addEventListener("timeupdate", highlight);
video.addEventListener("seeked", highlight);
$("cc").addEventListener("change", (e) => {
  video.textTracks[0].mode = e.target.checked ? "showing" : "hidden";
});
$("again").addEventListener("click", () => {
  video.pause();
  current = null;
  history.pushState(null, "", location.pathname);
  show("result", false);
  setError(null);
  $("file").click();
});

// ---------------------------------------------------------------- search

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  const response = await fetch(`/api/search?q=${encodeURIComponent(q)}`);
  const hits = $("hits");
  hits.replaceChildren();
  if (!response.ok) {
    $("search-status").textContent = await errorMessage(response);
    return;
  }
  const body = await response.json();
  $("search-status").textContent = body.hits.length ? `${body.hits.length}개 장면` : "찾은 장면이 없습니다.";
  for (const hit of body.hits) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const span = document.createElement("span");
    span.className = "span";
    span.textContent = `${hit.name} · ${clock(hit.start)} – ${clock(hit.end)}`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = hit.text;
    button.append(span, text);
    button.addEventListener("click", () => {
      if (current && current.id === hit.job) seek(hit.start);
      else { pendingSeek = hit.start; location.hash = `job=${hit.job}`; }
    });
    li.append(button);
    hits.append(li);
  }
});

// ---------------------------------------------------------------- start

let pendingSeek;
function route() {
  const m = /^#job=([A-Za-z0-9_-]{22})$/.exec(location.hash);
  if (m) {
    const t = pendingSeek;
    pendingSeek = undefined;
    follow(m[1], t);
  }
}
window.addEventListener("hashchange", () => { listMyJobs(); route(); });
listMyJobs();

// ---------------------------------------------------------------- 실시간 (serve --live)

function liveItem(record, alert) {
  const li = document.createElement("li");
  const d = new Date(record.wall), two = (n) => String(n).padStart(2, "0");
  const when = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;  // the viewer's clock
  li.textContent = alert ? `${when}  [${record.alert}]  ${record.text}` : `${when}  ${record.text}`;
  return li;
}

function followLive() {
  show("live", true);
  const next = {captions: 0, alerts: 0};
  const tick = async () => {
    try {
      const r = await fetch(`/api/live?captions=${next.captions}&alerts=${next.alerts}`);
      const body = await r.json();
      for (const rec of body.captions) {
        if (rec.text) $("live-captions").prepend(liveItem(rec, false));
        if (rec.event === "disconnected") $("live-status").textContent = "스트림이 끊겨 다시 연결하는 중입니다.";
        if (rec.event === "reconnected" || rec.event === "playing") $("live-status").textContent = "재생 중";
        if (rec.event === "stopped") $("live-status").textContent = "감시가 끝났습니다.";
      }
      for (const rec of body.alerts) $("live-alerts").prepend(liveItem(rec, true));
      for (const list of ["live-captions", "live-alerts"]) {
        while ($(list).children.length > 50) $(list).lastElementChild.remove();
      }
      Object.assign(next, body.next);
    } catch (e) { /* the server may be restarting */ }
    setTimeout(tick, 1500);
  };
  tick();
}

fetch("/api/config").then((r) => r.json()).then((c) => {
  limit = { bytes: c.max_upload_bytes, text: c.max_upload };
  $("limits").textContent += ` · 최대 ${c.max_upload}`;
  $("model").textContent = `모델: ${c.model}`;
  if (c.live) followLive();
});
route();
