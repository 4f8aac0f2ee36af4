// The comparison widget's view (anywidget): a slider, a flip, side by side and a difference.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "flux-compare";
  root.innerHTML = `
    <div class="fc-bar"></div>
    <div class="fc-pick"><select class="fc-a"></select> vs <select class="fc-b"></select></div>
    <div class="fc-stage"><img class="fc-under"><div class="fc-over"><img class="fc-top"></div>
      <div class="fc-line"></div></div>
    <input class="fc-range" type="range" min="0" max="100" step="0.5">
    <div class="fc-side"></div>
    <div class="fc-caption"></div>`;
  const style = document.createElement("style");
  style.textContent = `
    .flux-compare { font: 12px sans-serif; color: var(--jp-ui-font-color1, inherit); max-width: 100%; }
    .flux-compare .fc-bar button { margin: 0 4px 4px 0; padding: 2px 8px; cursor: pointer;
      background: var(--jp-layout-color2, #eee); color: inherit; border: 1px solid var(--jp-border-color1, #999); }
    .flux-compare .fc-bar button.on { background: var(--jp-brand-color1, #1976d2); color: #fff; }
    .flux-compare .fc-stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
    .flux-compare .fc-stage img { max-width: 100%; display: block; }
    .flux-compare .fc-over { position: absolute; inset: 0; overflow: hidden; }
    .flux-compare .fc-over img { max-width: none; height: 100%; }
    .flux-compare .fc-line { position: absolute; top: 0; bottom: 0; width: 2px; background: #fff;
      box-shadow: 0 0 2px #000; pointer-events: none; }
    .flux-compare .fc-range { display: block; width: 100%; max-width: 100%; }
    .flux-compare .fc-caption { white-space: pre-line; }
    .flux-compare .fc-side { display: flex; flex-wrap: wrap; gap: 8px; }
    .flux-compare .fc-side figure { margin: 0; max-width: 48%; }
    .flux-compare .fc-side img { max-width: 100%; }`;
  el.append(style, root);
  const $ = (s) => root.querySelector(s);
  const bar = $(".fc-bar");
  for (const mode of model.get("modes")) {
    const b = document.createElement("button");
    b.textContent = mode; b.dataset.mode = mode;
    b.onclick = () => { model.set("mode", mode); model.save_changes(); };
    bar.append(b);
  }
  for (const cls of [".fc-a", ".fc-b"]) {
    $(cls).onchange = (e) => { model.set(cls === ".fc-a" ? "a" : "b", Number(e.target.value)); model.save_changes(); };
  }
  $(".fc-range").oninput = (e) => { model.set("position", Number(e.target.value)); model.save_changes(); place(); };
  $(".fc-stage").onclick = () => {
    if (model.get("mode") === "flip") { model.set("flipped", !model.get("flipped")); model.save_changes(); }
  };
  function place() {
    const p = model.get("position");
    $(".fc-over").style.width = p + "%";
    $(".fc-line").style.left = `calc(${p}% - 1px)`;
    $(".fc-over img").style.width = $(".fc-under").clientWidth ? $(".fc-under").clientWidth + "px" : "auto";
    $(".fc-range").value = p;
  }
  function draw() {
    const images = model.get("images"), labels = model.get("labels");
    const mode = model.get("mode"), a = model.get("a"), b = model.get("b");
    for (const cls of [".fc-a", ".fc-b"]) {
      const sel = $(cls);
      sel.innerHTML = labels.map((l, i) => `<option value="${i}"></option>`).join("");
      labels.forEach((l, i) => { sel.options[i].textContent = l; });
      sel.value = String(cls === ".fc-a" ? a : b);
    }
    $(".fc-pick").style.display = images.length > 2 && mode !== "side by side" ? "" : "none";
    bar.querySelectorAll("button").forEach((btn) => btn.classList.toggle("on", btn.dataset.mode === mode));
    const single = mode === "flip" || mode === "difference";
    $(".fc-stage").style.display = mode === "side by side" ? "none" : "inline-block";
    $(".fc-range").style.display = mode === "slider" ? "" : "none";
    $(".fc-over").style.display = mode === "slider" ? "" : "none";
    $(".fc-line").style.display = mode === "slider" ? "" : "none";
    $(".fc-side").style.display = mode === "side by side" ? "flex" : "none";
    let under = images[b], caption = `${labels[a]}  ◀ ▶  ${labels[b]}`;
    if (mode === "flip") {
      const i = model.get("flipped") ? b : a;
      under = images[i];
      caption = `${labels[i]} (click to flip)`;
    }
    if (mode === "difference") {
      under = model.get("difference");
      caption = `difference: ${labels[a]} vs ${labels[b]}`;
    }
    $(".fc-under").src = under;
    $(".fc-top").src = images[a];
    $(".fc-side").innerHTML = "";
    images.forEach((src, i) => {
      const f = document.createElement("figure");
      const img = document.createElement("img");
      const c = document.createElement("figcaption");
      img.src = src;
      c.textContent = labels[i];
      f.append(img, c);
      $(".fc-side").append(f);
    });
    const line = model.get("caption");
    $(".fc-caption").textContent = (mode === "side by side" ? "" : caption) + (line ? "\n" + line : "");
    $(".fc-under").onload = place;
    place();
  }
  model.on("change", draw);
  draw();
}
export default { render };
