// The PixSim7 scene player: plays an exported scene from disk, with no server and no
// network. Its conditions and effects keep the scene service's semantics (docs/scenes.md;
// pixsim_scene.conditions and pixsim_scene.play), held to the same shared cases.
"use strict";

const PixsimPlayer = (() => {
  const MAX_LENGTH = 1000;
  const MAX_DEPTH = 32;
  const KEYWORDS = new Set(["and", "or", "not", "true", "false"]);
  const COMPARISONS = new Set(["==", "!=", "<", "<=", ">", ">="]);
  const TOKEN = /\s*(?:(-?\d+(?:\.\d+)?)|("(?:[^"\\]|\\["\\])*")|(==|!=|<=|>=|<|>|\(|\))|([A-Za-z_][A-Za-z0-9_]*))/y;

  class ConditionSyntaxError extends Error {}

  function tokens(text) {
    const found = [];
    let position = 0;
    for (;;) {
      while (position < text.length && /\s/.test(text[position])) position += 1;
      if (position === text.length) {
        found.push({ kind: "end", text: "", position });
        return found;
      }
      TOKEN.lastIndex = position;
      const match = TOKEN.exec(text);
      if (match === null) throw new ConditionSyntaxError(`unexpected ${text[position]}`);
      const kinds = ["number", "string", "op", "word"];
      const group = [1, 2, 3, 4].find((i) => match[i] !== undefined);
      found.push({ kind: kinds[group - 1], text: match[group], position });
      position = TOKEN.lastIndex;
    }
  }

  // The same grammar as the service's parser: or > and > not > comparison > operand.
  function parse(text) {
    if (text.length > MAX_LENGTH) throw new ConditionSyntaxError("too long");
    const list = tokens(text);
    let index = 0;
    let depth = 0;
    const current = () => list[index];
    const take = () => list[index++];
    const atWord = (word) => current().kind === "word" && current().text === word;
    const nested = () => {
      depth += 1;
      if (depth > MAX_DEPTH) throw new ConditionSyntaxError("nested too deep");
    };
    function or() {
      let expr = and();
      while (atWord("or")) { take(); expr = { op: "or", left: expr, right: and() }; }
      return expr;
    }
    function and() {
      let expr = not();
      while (atWord("and")) { take(); expr = { op: "and", left: expr, right: not() }; }
      return expr;
    }
    function not() {
      if (atWord("not")) {
        take(); nested();
        const operand = not();
        depth -= 1;
        return { op: "not", operand };
      }
      return comparison();
    }
    function comparison() {
      const left = operand();
      if (current().kind === "op" && COMPARISONS.has(current().text)) {
        const op = take().text;
        return { op, left, right: operand() };
      }
      return left;
    }
    function operand() {
      const token = take();
      if (token.kind === "number") return { literal: parseFloat(token.text) };
      if (token.kind === "string") {
        return { literal: token.text.slice(1, -1).replace(/\\(["\\])/g, "$1") };
      }
      if (token.kind === "word" && (token.text === "true" || token.text === "false")) {
        return { literal: token.text === "true" };
      }
      if (token.kind === "word" && !KEYWORDS.has(token.text)) return { name: token.text };
      if (token.kind === "op" && token.text === "(") {
        nested();
        const expr = or();
        depth -= 1;
        if (take().text !== ")") throw new ConditionSyntaxError("a '(' is not closed");
        return expr;
      }
      throw new ConditionSyntaxError("expected a value or a variable");
    }
    const expr = or();
    if (current().kind !== "end") throw new ConditionSyntaxError(`unexpected ${current().text}`);
    return expr;
  }

  function evaluate(expr, values) {
    if ("literal" in expr) return expr.literal;
    if ("name" in expr) {
      if (!(expr.name in values)) throw new Error(`no variable ${expr.name}`);
      return values[expr.name];
    }
    switch (expr.op) {
      case "not": return !evaluate(expr.operand, values);
      case "and": return Boolean(evaluate(expr.left, values)) && Boolean(evaluate(expr.right, values));
      case "or": return Boolean(evaluate(expr.left, values)) || Boolean(evaluate(expr.right, values));
      default: break;
    }
    const left = evaluate(expr.left, values);
    const right = evaluate(expr.right, values);
    switch (expr.op) {
      case "==": return left === right;
      case "!=": return left !== right;
      case "<": return left < right;
      case "<=": return left <= right;
      case ">": return left > right;
      default: return left >= right;
    }
  }

  function holds(condition, values) {
    return condition.trim() === "" || Boolean(evaluate(parse(condition), values));
  }

  // Effects in order; an increment that would not be a finite number leaves the value.
  function take(effects, values) {
    const after = { ...values };
    for (const effect of effects) {
      if (effect.op === "INCREMENT") {
        const total = after[effect.variable] + effect.value;
        if (Number.isFinite(total)) after[effect.variable] = total;
      } else {
        after[effect.variable] = effect.value;
      }
    }
    return after;
  }

  // What follows a node's clip: the first branch that holds, alone; else the choices that
  // hold; else the next connection, alone; else nothing (the end). `leaving` is in the
  // manifest's order, which is play order.
  function offered(leaving, values) {
    const byId = (a, b) => {
      const [x, y] = [a.id ?? "", b.id ?? ""];
      return x < y ? -1 : x > y ? 1 : 0;
    };
    const ordered = [...leaving].sort((a, b) => a.order - b.order || byId(a, b));
    const branch = ordered.find((c) => c.type === "BRANCH" && holds(c.condition, values));
    if (branch) return [branch];
    const choices = ordered.filter((c) => c.type === "CHOICE" && holds(c.condition, values));
    if (choices.length) return choices;
    return ordered.filter((c) => c.type === "NEXT").slice(0, 1);
  }

  return { parse, holds, take, offered, ConditionSyntaxError };
})();

(() => {
  const holder = document.getElementById("pixsim-data");
  if (holder === null) return; // loaded for its functions alone
  const { manifest, clips } = JSON.parse(holder.textContent);
  const nodes = new Map(manifest.nodes.map((n) => [n.key, n]));
  const leaving = new Map(manifest.nodes.map((n) => [n.key, []]));
  manifest.connections.forEach((c, index) => leaving.get(c.from).push({ ...c, index }));
  const first = [...manifest.nodes].sort((a, b) => a.order - b.order)[0];
  const start = manifest.scene.start ?? (first ? first.key : null);
  const initial = Object.fromEntries(manifest.variables.map((v) => [v.name, v.initial]));
  // One saved state per exported scene: its title and a digest of its manifest.
  const storageKey = `pixsim7-play:${manifest.scene.display_name}:${digest(holder.textContent)}`;

  const video = document.getElementById("clip");
  const still = document.getElementById("still");
  const missing = document.getElementById("missing");
  const choicesBox = document.getElementById("choices");
  const status = document.getElementById("status");
  let state = load() ?? { node: start, values: initial, step: 0 };
  let shown = 0; // which showing of a clip this is; its choices are offered once
  let offeredFor = -1;

  function digest(text) {
    let hash = 2166136261;
    for (let i = 0; i < text.length; i += 1) {
      hash ^= text.charCodeAt(i);
      hash = Math.imul(hash, 16777619) >>> 0;
    }
    return hash.toString(16);
  }

  function load() {
    try {
      const saved = JSON.parse(localStorage.getItem(storageKey) ?? "null");
      return saved && nodes.has(saved.node) ? saved : null;
    } catch {
      return null;
    }
  }

  function save() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(state));
    } catch {
      // Storage may be off (a private window): play goes on, unsaved.
    }
  }

  function show() {
    const node = nodes.get(state.node);
    shown += 1;
    document.body.dataset.node = state.node;
    document.body.dataset.step = String(state.step);
    choicesBox.replaceChildren();
    status.textContent = "";
    const clip = node.asset ? clips[node.asset] : undefined;
    video.hidden = true;
    still.hidden = true;
    missing.hidden = clip !== undefined;
    if (clip === undefined) {
      offer();
    } else if (clip.mime_type.startsWith("video/")) {
      video.hidden = false;
      video.src = clip.path;
      video.dataset.clip = clip.path;
      video.play().catch(() => offer()); // a clip that cannot play still lets play go on
    } else {
      still.hidden = false;
      still.src = clip.path;
      still.dataset.clip = clip.path;
      offer();
    }
  }

  function offer() {
    if (offeredFor === shown) return; // `ended`, `error` and a refused play() may all call
    offeredFor = shown;
    const offeredNow = PixsimPlayer.offered(leaving.get(state.node), state.values);
    if (offeredNow.length === 0) {
      status.textContent = "The end.";
      document.body.dataset.ended = "true";
      document.getElementById("restart").focus();
      return;
    }
    delete document.body.dataset.ended;
    if (offeredNow.length === 1 && offeredNow[0].type !== "CHOICE") {
      go(offeredNow[0]); // a branch or a next connection is taken without asking
      return;
    }
    const buttons = offeredNow.map((connection, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = connection.label;
      button.dataset.choice = String(index + 1);
      button.setAttribute("aria-keyshortcuts", String(index + 1));
      button.addEventListener("click", () => go(connection));
      return button;
    });
    choicesBox.replaceChildren(...buttons);
    buttons[0].focus();
  }

  function go(connection) {
    state = {
      node: connection.to,
      values: PixsimPlayer.take(connection.effects, state.values),
      step: state.step + 1,
    };
    save();
    show();
  }

  video.addEventListener("ended", offer);
  video.addEventListener("error", offer);
  document.getElementById("restart").addEventListener("click", () => {
    state = { node: start, values: initial, step: 0 };
    save();
    show();
  });
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (/^[1-9]$/.test(event.key)) {
      const button = choicesBox.querySelector(`button[data-choice="${event.key}"]`);
      if (button) button.click();
    } else if (event.key === " " && document.activeElement?.tagName !== "BUTTON") {
      event.preventDefault();
      if (!video.hidden) (video.paused ? video.play() : video.pause()).catch?.(() => {});
    } else if (event.key === "r" || event.key === "R") {
      document.getElementById("restart").click();
    }
  });
  if (start === null) {
    status.textContent = "This scene has no assets.";
  } else {
    show();
  }
})();
