// The audience editor: condition rows <-> YAML, the name checked as it is typed, and a live
// preview. The server does every conversion and check (one source of truth); this file only
// keeps the form, the YAML box and the preview panel in step.
(function () {
  "use strict";
  const form = document.getElementById("audience-form");
  if (!form) return;
  const state = JSON.parse(document.getElementById("editor-state").textContent);
  const rowsBox = document.getElementById("rows");
  const template = document.getElementById("row-template");
  const yamlBox = document.getElementById("id_rule_yaml");
  const tooComplex = document.getElementById("rows-too-complex");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const PARTS = {
    did: ["event", "within", "count", "where", "since"],
    did_not: ["event", "within", "where"],
    last_between: ["event", "between", "since"],
    attribute: ["attribute"],
    in_audience: ["audience"],
    not_in_audience: ["audience"],
  };
  const FIELDS = ["event", "within", "min_count", "where_key", "where_value", "newer", "older", "not_followed_by", "attribute", "op", "value", "audience"];
  let timer = null;
  let pending = null;
  let lastSource = "form";

  function debounce(fn, ms) {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  }

  function showParts(row, kind) {
    const wanted = PARTS[kind] || [];
    row.querySelectorAll(".part").forEach((part) => {
      const name = part.className.split(" ").find((c) => c.endsWith("-part")).replace("-part", "");
      part.hidden = !wanted.includes(name);
    });
  }

  function renderRows() {
    rowsBox.innerHTML = "";
    form.querySelector(`input[name=match][value=${state.match || "all"}]`).checked = true;
    (state.rows || []).forEach((values) => addRow(values, false));
    const fits = state.rows_fit !== false;
    rowsBox.hidden = !fits;
    tooComplex.hidden = fits;
    document.getElementById("add-row").hidden = !fits;
    form.querySelector(".match-switch").hidden = !fits;
  }

  function addRow(values, focus) {
    const row = template.content.firstElementChild.cloneNode(true);
    const kind = row.querySelector(".kind");
    kind.value = values.type || "did";
    FIELDS.forEach((field) => {
      const input = row.querySelector("." + field);
      if (input && values[field] !== undefined && values[field] !== null) input.value = values[field];
    });
    showParts(row, kind.value);
    kind.addEventListener("change", () => { showParts(row, kind.value); changed(); });
    row.querySelectorAll("input, select").forEach((input) => input.addEventListener("input", changed));
    row.querySelector(".remove").addEventListener("click", () => { row.remove(); changed(); });
    rowsBox.appendChild(row);
    if (focus) row.querySelector(".kind").focus();
  }

  function readRows() {
    return Array.from(rowsBox.querySelectorAll(".cond")).map((row) => {
      const values = { type: row.querySelector(".kind").value };
      FIELDS.forEach((field) => {
        const input = row.querySelector("." + field);
        if (input && !input.closest(".part").hidden) values[field] = input.value;
      });
      return values;
    });
  }

  function formPayload(source) {
    const data = new FormData(form);
    return {
      source: source,
      yaml: yamlBox.value,
      match: data.get("match") || "all",
      rows: readRows(),
      key: data.get("key") || "",
      exclusions: data.getAll("exclusions"),
      priority_group: data.get("priority_group") || "",
      priority_rank: data.get("priority_rank") || "",
      identifier_policy: data.get("identifier_policy") || "",
    };
  }

  function changed() {
    lastSource = "form";
    document.getElementById("preview").classList.add("stale");
    debounce(() => refresh("form"), 350);
  }

  function yamlChanged() {
    lastSource = "yaml";
    document.getElementById("preview").classList.add("stale");
    debounce(() => refresh("yaml"), 600);
  }

  function text(element, value) { element.textContent = value; }

  function list(element, items, render, empty) {
    element.innerHTML = "";
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = empty;
      element.appendChild(li);
      return;
    }
    items.forEach((item) => {
      const li = document.createElement("li");
      li.textContent = render(item);
      element.appendChild(li);
    });
  }

  function showPreview(answer) {
    const problems = document.getElementById("preview-problems");
    list(problems, answer.errors || [], (e) => e, "");
    if (!(answer.errors || []).length) problems.innerHTML = "";
    const preview = answer.preview;
    if (!preview) {
      text(document.getElementById("preview-size"), "—");
      return;
    }
    text(document.getElementById("preview-size"), preview.size.toLocaleString());
    text(document.getElementById("preview-size-label"), preview.size === 1 ? "person matches now" : "people match now");
    const coverage = preview.coverage === null ? "—" :
      `${Math.round(preview.coverage * 100)} % have a valid identifier (${preview.policy})` +
      (preview.coverage_estimate ? ` (a sample of ${preview.coverage_looked.toLocaleString()})` : "");
    text(document.getElementById("preview-coverage"), coverage);
    list(document.getElementById("preview-overlaps"), preview.overlaps.filter((o) => o.count > 0),
      (o) => `${o.name}: ${o.count.toLocaleString()} (${Math.round(o.share * 100)} %)`, "no overlap with any audience");
    list(document.getElementById("preview-sample"), preview.sample,
      (p) => p.customer_id + (p.email ? ` · ${p.email}` : ""), "nobody yet");
  }

  async function refresh(source) {
    const controller = new AbortController();
    if (pending) pending.abort();
    pending = controller;
    let answer;
    try {
      const response = await fetch(form.dataset.previewUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify(formPayload(source)),
        signal: controller.signal,
      });
      answer = await response.json();
    } catch (error) {
      if (error.name === "AbortError") return;
      answer = { errors: ["The preview could not be loaded; is the server running?"] };
    }
    if (pending !== controller) return;
    pending = null;
    if (source === "form" && answer.yaml !== undefined) yamlBox.value = answer.yaml;
    if (source === "yaml" && answer.rows_fit !== undefined) {
      state.rows_fit = answer.rows_fit;
      tooComplex.textContent = answer.rule === undefined ? tooComplex.dataset.broken : tooComplex.dataset.nested;
      if (answer.rows) { state.rows = answer.rows; state.match = answer.match; }
      renderRows();
    }
    document.getElementById("preview").classList.remove("stale");
    showPreview(answer);
    return answer;
  }

  async function checkName() {
    const name = document.getElementById("id_name").value;
    const key = form.querySelector("[name=key]").value;
    const box = document.getElementById("name-check");
    try {
      const response = await fetch(`${form.dataset.nameUrl}?name=${encodeURIComponent(name)}&key=${encodeURIComponent(key)}`);
      const answer = await response.json();
      box.textContent = answer.message;
      box.className = "name-check " + (answer.ok ? "ok" : "bad");
    } catch (error) {
      box.textContent = "";
    }
  }

  let nameTimer = null;
  document.getElementById("id_name").addEventListener("input", () => {
    clearTimeout(nameTimer);
    nameTimer = setTimeout(checkName, 250);
  });
  document.getElementById("add-row").addEventListener("click", () => { addRow({ type: "did", within: "2h" }, true); changed(); });
  form.querySelectorAll("input[name=match]").forEach((input) => input.addEventListener("change", changed));
  ["exclusions", "priority_group", "priority_rank", "identifier_policy"].forEach((name) =>
    form.querySelectorAll(`[name=${name}]`).forEach((input) => input.addEventListener("change", changed)));
  yamlBox.addEventListener("input", yamlChanged);

  form.addEventListener("submit", async (event) => {
    // Make sure the YAML the server saves and the rows agree with the side edited last, and
    // send the YAML back with the rows: a refused form must come back as it was typed.
    event.preventDefault();
    clearTimeout(timer);
    if (lastSource === "yaml") await refresh("yaml");
    else if (state.rows_fit !== false) await refresh("form");
    document.getElementById("state_json").value = JSON.stringify({
      match: formPayload("form").match, rows: readRows(), rows_fit: state.rows_fit, yaml: yamlBox.value,
    });
    HTMLFormElement.prototype.submit.call(form);
  });

  yamlBox.value = state.yaml || "";
  renderRows();
  if (document.getElementById("id_name").value) checkName();
  const filledIn = (state.rows || []).some((row) => row.event || row.attribute || row.audience);
  if (state.yaml || filledIn) {
    refresh(state.yaml && state.rows_fit === false ? "yaml" : "form");
  } else {
    // a new, empty form: say what to do instead of reporting the empty condition as a mistake
    text(document.getElementById("preview-size-label"), "Fill in a condition to see who matches.");
  }
})();
