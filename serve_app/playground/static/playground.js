// The playground: forms built from /openapi.json, runs through the queue, outputs by content type.
// Plain browser JavaScript, no dependencies, no build step.
"use strict";
(() => {
  const ROOT = new URL("..", location.href); // the app's root: this page lives at <root>/playground/
  const EXT = "x-serve-app-endpoint";
  const CUSTOM = "__custom__";
  const $ = (id) => document.getElementById(id);
  let spec = null;
  let endpoints = [];
  let current = null; // {op, ext, fields: [...], schema}
  let job = null; // {cancel_url, abort}
  let tab = "json";

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const url = (path) => new URL(path.replace(/^\//, ""), ROOT).href;
  const apiKey = () => $("api-key").value.trim();
  const authHeaders = () => (apiKey() ? { Authorization: `Key ${apiKey()}` } : {});
  const isEmpty = (v) => v === undefined || (typeof v === "object" && v !== null && !Array.isArray(v) && !Object.keys(v).length);

  function resolve(schema) {
    let s = schema || {};
    for (let i = 0; i < 32; i++) {
      if (s.$ref) {
        const { $ref, ...rest } = s;
        s = { ...spec.components.schemas[$ref.split("/").pop()], ...rest };
      } else if (s.allOf && s.allOf.length === 1) {
        const { allOf, ...rest } = s;
        s = { ...resolve(allOf[0]), ...rest };
      } else break;
    }
    return s;
  }

  // What widget a schema needs: {kind, core (the non-null variant), nullable}.
  function kindOf(schema) {
    const s = resolve(schema);
    let variants = s.anyOf || s.oneOf;
    let nullable = false;
    let core = s;
    if (Array.isArray(s.type)) {
      nullable = s.type.includes("null");
      const types = s.type.filter((t) => t !== "null");
      core = { ...s, type: types.length === 1 ? types[0] : undefined };
    }
    if (variants) {
      variants = variants.map(resolve).filter((v) => {
        if (v.type === "null") { nullable = true; return false; }
        return true;
      });
      if (variants.length === 1) {
        const { anyOf, oneOf, ...meta } = s;
        const inner = kindOf({ ...variants[0], ...meta });
        return { ...inner, nullable: nullable || inner.nullable };
      }
      const presets = variants.find((v) => Array.isArray(v.enum));
      const dims = variants.find((v) => v.type === "object" && v.properties);
      if (presets && dims && variants.length === 2) return { kind: "preset", core: s, presets, dims, nullable };
      return { kind: "json", core: s, nullable };
    }
    const ui = core.ui || {};
    if (Array.isArray(core.enum)) return { kind: "enum", core, nullable };
    if (core.const !== undefined) return { kind: "const", core, nullable };
    switch (core.type) {
      case "string":
        if (ui.field === "file" || core.format === "binary") return { kind: "file", core, nullable };
        if (ui.field === "textarea") return { kind: "textarea", core, nullable };
        return { kind: "string", core, nullable };
      case "integer":
      case "number":
        return { kind: "number", core, nullable };
      case "boolean":
        return { kind: "boolean", core, nullable };
      case "array":
        return { kind: "array", core, nullable };
      case "object":
        return core.properties ? { kind: "object", core, nullable } : { kind: "json", core, nullable };
      default:
        return { kind: "json", core, nullable };
    }
  }

  // ------------------------------------------------------------------ fields
  // A field: {name, node, get() -> value | undefined, set(value), error(msg), reset()}.
  function makeField(name, schema, required, label) {
    const s = resolve(schema);
    const k = kindOf(s);
    const meta = { ...k.core, ...s };
    const initial = "default" in s ? s.default : required && s.examples ? s.examples[0] : undefined;
    const wrap = el("div", { class: "field", "data-field": name });
    const title = label !== undefined ? label : meta.title || name;
    if (title !== "") {
      wrap.append(el("label", { for: `f-${name}` }, title, required ? el("span", { class: "required", text: " *" }) : null));
    }
    const widget = WIDGETS[k.kind](name, k, meta, required);
    wrap.append(widget.node);
    if (meta.description) wrap.append(el("div", { class: "hint", text: meta.description }));
    const errorNode = el("div", { class: "field-error", hidden: true });
    wrap.append(errorNode);
    const field = {
      name,
      node: wrap,
      important: !!(meta.ui && meta.ui.important),
      hidden: !!(meta.ui && meta.ui.hidden),
      get: widget.get,
      set: widget.set,
      reset() { widget.set(initial); },
      error(msg) {
        wrap.classList.toggle("invalid", !!msg);
        errorNode.hidden = !msg;
        errorNode.textContent = msg || "";
      },
    };
    field.reset();
    return field;
  }

  function inputAttrs(name, meta, extra = {}) {
    const ex = Array.isArray(meta.examples) && meta.examples.length ? meta.examples[0] : undefined;
    return { id: `f-${name}`, name, placeholder: ex !== undefined && typeof ex !== "object" ? String(ex) : undefined, ...extra };
  }

  const WIDGETS = {
    string(name, k, meta, required) {
      const input = el("input", inputAttrs(name, meta, { type: "text", maxlength: meta.maxLength }));
      input.addEventListener("input", refreshSnippet);
      return {
        node: input,
        get: () => (input.value === "" && !required ? undefined : input.value),
        set: (v) => { input.value = v === undefined || v === null ? "" : String(v); },
      };
    },
    textarea(name, k, meta, required) {
      const input = el("textarea", inputAttrs(name, meta, { rows: 4, maxlength: meta.maxLength }));
      input.addEventListener("input", refreshSnippet);
      return {
        node: input,
        get: () => (input.value === "" && !required ? undefined : input.value),
        set: (v) => { input.value = v === undefined || v === null ? "" : String(v); },
      };
    },
    number(name, k, meta) {
      const c = k.core;
      const min = c.minimum ?? c.exclusiveMinimum;
      const max = c.maximum ?? c.exclusiveMaximum;
      const step = c.multipleOf || (c.type === "integer" ? 1 : "any");
      // Bounds past 2^53 (64-bit seeds) are not numbers a browser can hold: leave them to the server.
      const safe = (v) => (v !== undefined && Math.abs(v) <= Number.MAX_SAFE_INTEGER ? v : undefined);
      const input = el("input", inputAttrs(name, meta, { type: "number", min: safe(min), max: safe(max), step }));
      input.addEventListener("input", refreshSnippet);
      return {
        node: input,
        get: () => (input.value === "" ? undefined : Number(input.value)),
        set: (v) => { input.value = v === undefined || v === null ? "" : String(v); },
      };
    },
    boolean(name) {
      const input = el("input", { type: "checkbox", id: `f-${name}`, name });
      input.addEventListener("change", refreshSnippet);
      return { node: input, get: () => input.checked, set: (v) => { input.checked = !!v; } };
    },
    enum(name, k, meta, required) {
      const select = el("select", { id: `f-${name}`, name });
      if (k.nullable || !required) select.append(el("option", { value: "", text: "—" }));
      for (const v of k.core.enum) select.append(el("option", { value: String(v), text: String(v) }));
      select.addEventListener("change", refreshSnippet);
      return {
        node: select,
        get: () => (select.value === "" ? undefined : k.core.enum.find((v) => String(v) === select.value)),
        set: (v) => { select.value = v === undefined || v === null ? "" : String(v); },
      };
    },
    const(name, k) {
      return { node: el("code", { text: JSON.stringify(k.core.const) }), get: () => k.core.const, set: () => {} };
    },
    preset(name, k, meta, required) {
      // fal's image sizes: a preset name, or explicit dimensions.
      const select = el("select", { id: `f-${name}`, name });
      if (k.nullable || !required) select.append(el("option", { value: "", text: "—" }));
      for (const v of k.presets.enum) select.append(el("option", { value: String(v), text: String(v) }));
      select.append(el("option", { value: CUSTOM, text: "custom…" }));
      const sub = objectFields(name, k.dims);
      const box = el("div", { class: "row custom", hidden: true }, ...sub.map((f) => f.node));
      const sync = () => { box.hidden = select.value !== CUSTOM; refreshSnippet(); };
      select.addEventListener("change", sync);
      return {
        node: el("div", {}, select, box),
        get() {
          if (select.value === CUSTOM) return collect(sub);
          return select.value === "" ? undefined : select.value;
        },
        set(v) {
          if (v && typeof v === "object") {
            select.value = CUSTOM;
            for (const f of sub) f.set(v[f.name.split(".").pop()]);
          } else {
            select.value = v === undefined || v === null ? "" : String(v);
            for (const f of sub) f.reset();
          }
          box.hidden = select.value !== CUSTOM;
        },
      };
    },
    file(name, k, meta, required) {
      // A URL field; a picked file is uploaded to POST /files and its URL filled in.
      const input = el("input", inputAttrs(name, meta, { type: "text" }));
      const picker = el("input", { type: "file", "aria-label": `upload ${name}` });
      const note = el("span", { class: "hint" });
      input.addEventListener("input", refreshSnippet);
      picker.addEventListener("change", async () => {
        const file = picker.files[0];
        if (!file) return;
        note.textContent = "uploading…";
        const form = new FormData();
        form.append("file", file, file.name);
        try {
          const r = await fetch(url("/files"), { method: "POST", body: form, headers: authHeaders() });
          const data = await r.json();
          if (!r.ok) throw new Error(describeError(r.status, data));
          input.value = data.url;
          note.textContent = `uploaded ${data.file_name} (${data.file_size} bytes)`;
          refreshSnippet();
        } catch (e) {
          note.textContent = `upload failed: ${e.message}`;
        }
      });
      return {
        node: el("div", {}, input, el("div", { class: "row" }, picker, note)),
        get: () => (input.value === "" && !required ? undefined : input.value),
        set: (v) => { input.value = v === undefined || v === null ? "" : String(v); },
      };
    },
    object(name, k) {
      const sub = objectFields(name, k.core);
      return {
        node: el("fieldset", {}, ...sub.map((f) => f.node)),
        get: () => { const v = collect(sub); return isEmpty(v) ? undefined : v; },
        set: (v) => { for (const f of sub) { const key = f.name.split(".").pop(); v && key in v ? f.set(v[key]) : f.reset(); } },
      };
    },
    array(name, k, meta) {
      const items = k.core.items || {};
      const list = el("div", { class: "list" });
      let rows = [];
      const addRow = (value) => {
        const field = makeField(`${name}.${rows.length}`, items, true, "");
        if (value !== undefined) field.set(value);
        const remove = el("button", { type: "button", class: "small", text: "remove" });
        const row = el("div", { class: "list-item" }, field.node, remove);
        const entry = { field, row };
        remove.addEventListener("click", () => { rows = rows.filter((r) => r !== entry); row.remove(); refreshSnippet(); });
        rows.push(entry);
        list.append(row);
      };
      const add = el("button", { type: "button", class: "small", text: "add", "data-add": name });
      add.addEventListener("click", () => { addRow(); refreshSnippet(); });
      return {
        node: el("div", {}, list, add),
        get() {
          const values = rows.map((r) => r.field.get()).filter((v) => v !== undefined);
          return values.length || meta.minItems ? values : undefined;
        },
        set(v) {
          rows = [];
          list.replaceChildren();
          if (Array.isArray(v)) v.forEach((item) => addRow(item));
        },
      };
    },
    json(name, k, meta, required) {
      const input = el("textarea", inputAttrs(name, meta, { rows: 3, class: "json" }));
      input.addEventListener("input", refreshSnippet);
      return {
        node: input,
        get() {
          if (input.value.trim() === "") return required ? null : undefined;
          try { return JSON.parse(input.value); } catch { return input.value; }
        },
        set: (v) => { input.value = v === undefined ? "" : JSON.stringify(v); },
      };
    },
  };

  function objectFields(prefix, schema) {
    const s = resolve(schema);
    const required = new Set(s.required || []);
    return Object.entries(s.properties || {}).map(([key, prop]) =>
      makeField(prefix ? `${prefix}.${key}` : key, prop, required.has(key)));
  }

  function collect(fields) {
    const out = {};
    for (const f of fields) {
      const v = f.get();
      if (v !== undefined) out[f.name.split(".").pop()] = v;
    }
    return out;
  }

  // ------------------------------------------------------------------ endpoints and the form
  function listEndpoints() {
    const found = [];
    for (const [path, item] of Object.entries(spec.paths || {})) {
      const op = item.post;
      if (op && op[EXT]) found.push({ path, op, ext: op[EXT] });
    }
    const nav = $("endpoints");
    nav.replaceChildren();
    let service = null;
    for (const ep of found) {
      if (ep.ext.service !== service) {
        service = ep.ext.service;
        nav.append(el("li", { class: "service", text: service }));
      }
      const link = el("a", { href: `#${ep.ext.id}`, "data-endpoint": ep.ext.id, text: ep.path });
      nav.append(el("li", {}, link));
    }
    return found;
  }

  function requestSchema(op) {
    const content = (op.requestBody || {}).content || {};
    return resolve((content["application/json"] || {}).schema || {});
  }

  function show(ep) {
    current = { ...ep, schema: requestSchema(ep.op) };
    for (const a of document.querySelectorAll("#endpoints a")) a.classList.toggle("active", a.dataset.endpoint === ep.ext.id);
    $("endpoint").hidden = false;
    $("endpoint-title").textContent = ep.path;
    $("endpoint-description").textContent = ep.op.description || ep.op.summary || "";
    const fields = objectFields("", current.schema).filter((f) => !f.hidden);
    const required = new Set(current.schema.required || []);
    const main = fields.filter((f) => f.important || required.has(f.name));
    const more = fields.filter((f) => !main.includes(f));
    $("fields").replaceChildren(...main.map((f) => f.node));
    $("more-fields").replaceChildren(...more.map((f) => f.node));
    $("more").hidden = !more.length;
    current.fields = fields;
    clearRun();
    refreshSnippet();
  }

  function route() {
    const id = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
    const ep = endpoints.find((e) => e.ext.id === id) || endpoints[0];
    if (ep) show(ep);
  }

  // ------------------------------------------------------------------ snippets
  function shellQuote(s) { return `'${s.replace(/'/g, "'\\''")}'`; }

  function py(value, indent = 0) {
    const pad = " ".repeat(indent + 4);
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) {
      if (!value.length) return "[]";
      return `[\n${value.map((v) => pad + py(v, indent + 4)).join(",\n")},\n${" ".repeat(indent)}]`;
    }
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${py(v, indent + 4)}`).join(",\n")},\n${" ".repeat(indent)}}`;
  }

  function snippet(body) {
    const ext = current.ext;
    if (tab === "json") return JSON.stringify(body, null, 2);
    const host = ROOT.host + ROOT.pathname.replace(/\/$/, "");
    if (tab === "curl") {
      const auth = apiKey() ? " -H \"Authorization: Key $FAL_KEY\"" : "";
      const data = shellQuote(JSON.stringify(body));
      const lines = [];
      if (ext.queue) {
        lines.push("# queue it: the answer has status_url (add /stream for SSE) and response_url",
          `curl -s ${url(ext.queue)}${auth} -H 'content-type: application/json' \\\n  -d ${data}`, "");
      }
      lines.push("# or wait for the output in one call", `curl -s ${url(ext.path)}${auth} -H 'content-type: application/json' \\\n  -d ${data}`);
      return lines.join("\n");
    }
    return [
      "# fal-client speaks https only: serve the app with TLS (README: HTTPS), then",
      `#   export FAL_RUN_HOST=${host} FAL_QUEUE_RUN_HOST=${host}/queue FAL_KEY=...`,
      "import fal_client",
      "",
      "result = fal_client.subscribe(",
      `    ${JSON.stringify(ext.id)},`,
      `    arguments=${py(body, 4)},`,
      "    with_logs=True,",
      "    on_queue_update=print,",
      ")",
      "print(result)",
    ].join("\n");
  }

  function refreshSnippet() {
    if (!current || !current.fields) return;
    $("snippet").textContent = snippet(collect(current.fields));
  }

  // ------------------------------------------------------------------ running
  function setStatus(text, requestId) {
    $("status-text").textContent = text;
    if (requestId !== undefined) $("request-id").textContent = requestId ? `request ${requestId}` : "";
  }

  function clearRun() {
    setStatus("Idle", "");
    $("progress").hidden = true;
    $("progress").value = 0;
    $("preview").replaceChildren();
    $("output").replaceChildren();
    $("output-json-box").hidden = true;
    $("logs-box").hidden = true;
    $("logs").textContent = "";
    $("form-error").hidden = true;
    for (const f of (current && current.fields) || []) f.error("");
  }

  function describeError(status, body) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n");
    return `${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  }

  function showError(status, body) {
    const detail = body && body.detail;
    if (Array.isArray(detail)) {
      for (const d of detail) {
        const loc = (d.loc || []).slice(d.loc && d.loc[0] === "body" ? 1 : 0);
        const field = current.fields.find((f) => f.name === String(loc[0]));
        if (field) field.error(d.msg);
      }
    }
    $("form-error").textContent = describeError(status, body);
    $("form-error").hidden = false;
    setStatus(`Failed (${status})`);
  }

  async function* sseFrames(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) yield JSON.parse(data);
      }
    }
  }

  function onEvent(event) {
    if (!event) return;
    if (event.type === "progress") {
      $("progress").hidden = false;
      $("progress").value = event.progress || 0;
      setStatus(`Running: ${event.message || "step"} ${event.step}/${event.total}`);
      if (event.preview && event.preview.url) {
        $("preview").replaceChildren(el("img", { src: event.preview.url, alt: "preview", class: "preview" }));
      }
    } else if (event.type !== "error") {
      const files = [];
      findFiles(event, files);
      for (const f of files) $("preview").append(renderFile(f));
    }
  }

  function addLogs(logs) {
    if (!Array.isArray(logs) || !logs.length) return;
    $("logs-box").hidden = false;
    $("logs").textContent += logs.map((l) => `${l.level || ""} ${l.message}`.trim()).join("\n") + "\n";
  }

  async function follow(submitted, signal) {
    // The status stream: IN_QUEUE / IN_PROGRESS frames (service events under `event`) until COMPLETED.
    try {
      const r = await fetch(`${submitted.status_url}/stream?logs=1`, { headers: authHeaders(), signal });
      if (!r.ok) throw new Error(`status stream: ${r.status}`);
      for await (const frame of sseFrames(r)) {
        addLogs(frame.logs);
        if (frame.status === "IN_QUEUE") setStatus(`In queue (position ${frame.queue_position ?? 0})`);
        else if (frame.status === "IN_PROGRESS" && frame.event) onEvent(frame.event);
        else if (frame.status === "IN_PROGRESS") setStatus("Running");
        else if (frame.status === "COMPLETED") return;
      }
    } catch (e) {
      if (signal.aborted) throw e;
    }
    for (;;) { // the stream broke: poll
      const r = await fetch(`${submitted.status_url}?logs=1`, { headers: authHeaders(), signal });
      const s = await r.json();
      if (s.status === "COMPLETED") return;
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  }

  async function run(ev) {
    ev.preventDefault();
    if (!current || job) return;
    clearRun();
    const body = collect(current.fields);
    const ext = current.ext;
    const headers = { "content-type": "application/json", ...authHeaders() };
    const abort = new AbortController();
    const started = performance.now();
    $("run").disabled = true;
    try {
      let output;
      if (ext.queue) {
        setStatus("Submitting");
        const r = await fetch(url(ext.queue), { method: "POST", headers, body: JSON.stringify(body) });
        const submitted = await r.json().catch(() => ({}));
        if (!r.ok) return showError(r.status, submitted);
        job = { cancel_url: submitted.cancel_url, abort };
        $("cancel").disabled = false;
        setStatus("In queue", submitted.request_id);
        await follow(submitted, abort.signal);
        const res = await fetch(submitted.response_url, { headers: authHeaders() });
        output = await res.json().catch(() => ({}));
        if (!res.ok) return showError(res.status, output);
      } else {
        setStatus("Running");
        const r = await fetch(url(ext.path), { method: "POST", headers, body: JSON.stringify(body) });
        output = await r.json().catch(() => ({}));
        if (!r.ok) return showError(r.status, output);
      }
      $("progress").hidden = true;
      renderOutput(output);
      setStatus(`Completed in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    } catch (e) {
      if (!abort.signal.aborted) showError("network", { detail: String(e) });
    } finally {
      job = null;
      $("run").disabled = false;
      $("cancel").disabled = true;
    }
  }

  async function cancel() {
    if (!job) return;
    const r = await fetch(job.cancel_url, { method: "PUT", headers: authHeaders() });
    const body = await r.json().catch(() => ({}));
    setStatus(`Cancel: ${body.status || r.status}`);
  }

  // ------------------------------------------------------------------ outputs
  function findFiles(value, out) {
    if (Array.isArray(value)) value.forEach((v) => findFiles(v, out));
    else if (value && typeof value === "object") {
      if (typeof value.url === "string" && ("content_type" in value || "file_name" in value)) out.push(value);
      else Object.values(value).forEach((v) => findFiles(v, out));
    }
  }

  function renderFile(file) {
    const type = file.content_type || "";
    const name = file.file_name || file.url.split("/").pop();
    if (type.startsWith("image/")) return el("img", { src: file.url, alt: name, width: file.width, height: file.height });
    if (type.startsWith("audio/")) return el("audio", { src: file.url, controls: true });
    if (type.startsWith("video/")) return el("video", { src: file.url, controls: true });
    const size = file.file_size ? ` (${file.file_size} bytes)` : "";
    return el("div", { class: "file" }, el("a", { href: file.url, download: name, text: `Download ${name}` }), size);
  }

  function renderOutput(output) {
    const files = [];
    findFiles(output, files);
    $("preview").replaceChildren();
    $("output").replaceChildren(...files.map(renderFile));
    $("output-json").textContent = JSON.stringify(output, null, 2);
    $("output-json-box").hidden = false;
    $("output-json-box").open = !files.length;
  }

  // ------------------------------------------------------------------ start
  async function start() {
    $("api-key").value = localStorage.getItem("playground-api-key") || "";
    $("api-key").addEventListener("change", () => { localStorage.setItem("playground-api-key", apiKey()); refreshSnippet(); });
    $("form").addEventListener("submit", run);
    $("cancel").addEventListener("click", cancel);
    $("reset").addEventListener("click", () => { for (const f of current.fields) f.reset(); clearRun(); refreshSnippet(); });
    for (const b of document.querySelectorAll(".tabs button")) {
      b.addEventListener("click", () => {
        tab = b.dataset.tab;
        for (const o of document.querySelectorAll(".tabs button")) o.classList.toggle("active", o === b);
        refreshSnippet();
      });
    }
    try {
      const r = await fetch(url("/openapi.json"));
      if (!r.ok) throw new Error(`/openapi.json: ${r.status}`);
      spec = await r.json();
    } catch (e) {
      $("load-error").textContent = `Could not load the API description: ${e.message}`;
      $("load-error").hidden = false;
      return;
    }
    $("title").textContent = `${spec.info.title} · playground`;
    document.title = $("title").textContent;
    endpoints = listEndpoints();
    window.addEventListener("hashchange", route);
    route();
    document.body.dataset.ready = "true";
  }

  start();
})();
