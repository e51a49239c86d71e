// The example viewer: loads one example's stored attention rows (JSON written by `featstore report`)
// and colours its tokens by the last token's attention for the chosen layer and head.
(function () {
  const params = new URLSearchParams(window.location.search);
  // Names become path parts below: refuse anything that could leave the report's folders.
  const safe = (value) => value !== null && value !== "" && !/[\/\\]/.test(value) && value !== "." && value !== "..";
  const model = params.get("model"), dataset = params.get("dataset"), id = params.get("id");
  const part = encodeURIComponent;
  const error = document.getElementById("error");
  const fail = (message) => { error.hidden = false; error.textContent = message; };
  if (!safe(model) || !safe(dataset) || !/^[0-9]+$/.test(id || "")) {
    fail("Open an example from a dataset page (this page needs ?model=…&dataset=…&id=…).");
    return;
  }
  document.getElementById("back").href = `models/${part(model)}/${part(dataset)}.html`;
  document.getElementById("back").textContent = `${dataset}`;
  const layerSelect = document.getElementById("layer"), headSelect = document.getElementById("head");
  const skipFirst = document.getElementById("skip-first");
  const container = document.getElementById("tokens"), largest = document.getElementById("largest");

  function render(example) {
    const layerIndex = Number(layerSelect.value), head = Number(headSelect.value);
    const row = example.attn[layerIndex][head];
    const scaleFrom = skipFirst.checked && row.length > 1 ? 1 : 0;
    const peak = Math.max(...row.slice(scaleFrom)) || 1;
    container.querySelectorAll("span.token").forEach((span, i) => {
      const value = row[i];
      const alpha = Math.min(value / peak, 1);
      span.style.background = `rgba(31, 95, 174, ${alpha.toFixed(4)})`;
      span.style.color = alpha > 0.55 ? "#fff" : "";
      span.dataset.value = String(value);
      span.title = `token ${i} ${JSON.stringify(example.tokens[i])} (id ${example.token_ids[i]}): ${value}`;
    });
    const order = row.map((value, i) => [value, i]).sort((a, b) => b[0] - a[0]).slice(0, 8);
    largest.replaceChildren(...order.map(([value, i]) => {
      const item = document.createElement("li");
      item.textContent = `${value}  token ${i} ${JSON.stringify(example.tokens[i])}`;
      return item;
    }));
    document.getElementById("row-summary").textContent =
      `layer ${example.layers[layerIndex]}, head ${head}: largest weight ${order[0][0]} on token ${order[0][1]}`;
  }

  function show(example) {
    document.title = `${dataset} #${example.example_id} · featstore report`;
    document.getElementById("title").textContent = `${dataset} · example ${example.example_id}`;
    const facts = [["model", example.model], ["label", example.label], ["tokens", example.seq_len]]
      .concat(example.scores.map((s) => [`score: ${s.setting}`, s.score.toFixed(3)]));
    document.getElementById("facts").replaceChildren(...facts.flatMap(([name, value]) => {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = name; dd.textContent = String(value);
      return [dt, dd];
    }));
    layerSelect.replaceChildren(...example.layers.map((layer, i) => new Option(String(layer), String(i))));
    headSelect.replaceChildren(...Array.from({ length: example.n_heads }, (_, h) => new Option(String(h), String(h))));
    const preferred = new URLSearchParams(window.location.hash.slice(1));
    if (preferred.has("layer")) layerSelect.value = String(Math.max(0, example.layers.indexOf(Number(preferred.get("layer")))));
    if (preferred.has("head")) headSelect.value = preferred.get("head");
    container.replaceChildren(...example.tokens.map((text, i) => {
      const span = document.createElement("span");
      span.className = i === example.tokens.length - 1 ? "token last" : "token";
      span.textContent = text;
      return span;
    }));
    [layerSelect, headSelect, skipFirst].forEach((control) => control.addEventListener("change", () => render(example)));
    render(example);
  }

  fetch(`data/${part(model)}/${part(dataset)}/examples/${id}.json`)
    .then((response) => {
      if (!response.ok) throw new Error(`no stored example ${id} of ${dataset} in this report`);
      return response.json();
    })
    .then(show)
    .catch((err) => fail(err.message));
})();
