// The playground: the same prompt through each mode at once, over /v1/completions with
// stream=true and return_block_text=true. Every chunk is one step of the server: the text it
// committed, and the block being decoded past it (MASK marks a masked position).
"use strict";

const MASK = "\u2591";
const $ = (selector, root = document) => root.querySelector(selector);
let config = { model: "", modes: [], defaults: {} };

function number(id) {
  const v = $(`#${id}`).value;
  return v === "" ? undefined : Number(v);
}

function requestBody(mode) {
  const body = {
    model: config.model, prompt: $("#prompt").value, mode, stream: true,
    stream_options: { include_usage: true }, return_block_text: true,
  };
  for (const id of ["max_tokens", "temperature", "seed", "block_length", "threshold"]) {
    if (number(id) !== undefined) body[id] = number(id);
  }
  if (mode !== "diffusion") delete body.threshold;
  return body;
}

// The block as spans: masked positions and the tokens proposed or decided around them.
function blockNodes(block) {
  const nodes = [];
  for (const part of block.split(new RegExp(`(${MASK}+)`))) {
    if (!part) continue;
    const span = document.createElement("span");
    span.className = part[0] === MASK ? "mask" : "proposed";
    span.textContent = part;
    nodes.push(span);
  }
  return nodes;
}

class Column {
  constructor(mode) {
    this.mode = mode;
    this.el = $("#column").content.firstElementChild.cloneNode(true);
    this.el.id = `col-${mode}`;
    $("h2", this.el).textContent = mode;
    $("#columns").append(this.el);
  }

  reset() {
    this.text = ""; this.block = ""; this.passes = 0; this.tokens = 0;
    this.t0 = performance.now();
    $(".committed", this.el).textContent = "";
    $(".block", this.el).replaceChildren();
    $(".log", this.el).replaceChildren();
    this.state("running", "waiting for the first pass");
  }

  state(name, stats) {
    this.el.dataset.state = name;
    $(".stats", this.el).textContent = stats;
  }

  update(choice) {
    this.text += choice.text || "";
    this.passes = choice.forward_passes;
    this.tokens = choice.completion_tokens;
    const block = choice.block_text || "";
    $(".committed", this.el).textContent = this.text;
    $(".block", this.el).replaceChildren(...blockNodes(block));
    if (block && block !== this.block) {
      const row = document.createElement("li");
      row.replaceChildren(...blockNodes(block));
      row.title = `pass ${this.passes}`;
      $(".log", this.el).append(row);
    }
    this.block = block;
    this.el.dataset.passes = String(this.passes);
    this.showStats();
  }

  showStats(done = false) {
    const s = (performance.now() - this.t0) / 1000;
    const tpf = this.passes ? this.tokens / this.passes : 0;
    this.state(done ? "done" : "running",
      `${this.tokens} tokens in ${this.passes} passes: ${tpf.toFixed(2)} tokens/pass, ` +
      `${(this.tokens / Math.max(s, 1e-3)).toFixed(1)} tokens/s, ${s.toFixed(2)} s`);
  }

  async run() {
    this.reset();
    const headers = { "Content-Type": "application/json" };
    if ($("#key").value) headers.Authorization = `Bearer ${$("#key").value}`;
    const r = await fetch("/v1/completions",
      { method: "POST", headers, body: JSON.stringify(requestBody(this.mode)) });
    if (!r.ok) {
      const answer = await r.json().catch(() => ({}));
      this.state("error", answer.error ? answer.error.message : `HTTP ${r.status}`);
      return;
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.event(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  event(text) {
    if (!text.startsWith("data: ")) return;
    const data = text.slice(6);
    if (data === "[DONE]") {
      $(".block", this.el).replaceChildren();
      if (this.el.dataset.state !== "error") this.showStats(true);
      return;
    }
    const obj = JSON.parse(data);
    if (obj.error) this.state("error", obj.error.message);
    else if (obj.choices.length) this.update(obj.choices[0]);
  }
}

async function main() {
  config = await (await fetch("/playground.json")).json();
  $("#model").textContent = `model ${config.model}`;
  if (config.defaults.max_tokens) $("#max_tokens").value = config.defaults.max_tokens;
  const columns = config.modes.map((mode) => new Column(mode));
  $("#form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#race").disabled = true;
    await Promise.all(columns.map((c) => c.run().catch((err) => c.state("error", String(err)))));
    $("#race").disabled = false;
  });
  document.body.dataset.ready = "true";
}

main();
