// The latent index: sort by any column (click its header), filter by any column (">0.01",
// "<5", "0.1..0.3", or text contained). Rows are built with textContent: strings stay text.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("latents-data").textContent);
  const cols = data.columns, rows = data.rows, PAGE = 2000;
  const table = document.getElementById("latents");
  const thead = table.createTHead(), tbody = table.createTBody();
  const head = thead.insertRow(), filt = thead.insertRow();
  const filters = cols.map(() => "");
  let sortCol = 0, sortDir = 1, shown = PAGE;

  function test(expr, v) {
    expr = expr.trim();
    if (!expr) return true;
    const num = typeof v === "number";
    let m;
    if (num && (m = expr.match(/^([<>]=?)\s*(-?[\d.eE+-]+)$/))) {
      const x = parseFloat(m[2]);
      return m[1] === "<" ? v < x : m[1] === "<=" ? v <= x : m[1] === ">" ? v > x : v >= x;
    }
    if (num && (m = expr.match(/^(-?[\d.eE+-]+)\s*\.\.\s*(-?[\d.eE+-]+)$/))) {
      return v >= parseFloat(m[1]) && v <= parseFloat(m[2]);
    }
    return String(v).toLowerCase().includes(expr.toLowerCase());
  }
  function fmt(v) {
    if (typeof v !== "number") return v === null ? "" : String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1e-3 || v === 0 ? v.toPrecision(4) : v.toExponential(2);
  }
  function render() {
    const kept = rows.filter((r) => cols.every((_, j) => test(filters[j], r[j])));
    kept.sort((a, b) => {
      const x = a[sortCol], y = b[sortCol];
      if (x === y) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    tbody.textContent = "";
    for (const r of kept.slice(0, shown)) {
      const tr = tbody.insertRow();
      tr.className = "latent";
      r.forEach((v, j) => {
        const td = tr.insertCell();
        if (j === 0) {
          const a = document.createElement("a");
          a.href = "latents/" + v + ".html";
          a.textContent = String(v);
          td.appendChild(a);
        } else td.textContent = fmt(v);
        if (typeof v === "number") td.className = "num";
      });
    }
    const status = document.getElementById("status");
    status.textContent = kept.length + " of " + rows.length + " latents" +
      (kept.length > shown ? " (first " + shown + " shown)" : "");
    status.dataset.matching = kept.length;
    document.getElementById("more").hidden = kept.length <= shown;
    head.querySelectorAll("th").forEach((th, j) => {
      th.className = j === sortCol ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
  }
  cols.forEach((c, j) => {
    const th = document.createElement("th");
    th.textContent = c;
    th.title = data.owners[c] ? "from the " + data.owners[c] + " suite" : "";
    th.addEventListener("click", () => {
      sortDir = sortCol === j ? -sortDir : (j === 0 ? 1 : -1);
      sortCol = j;
      render();
    });
    head.appendChild(th);
    const td = document.createElement("th");
    const inp = document.createElement("input");
    inp.className = "filter";
    inp.placeholder = j === 0 ? "0..99" : ">0";
    inp.addEventListener("input", () => { filters[j] = inp.value; shown = PAGE; render(); });
    td.appendChild(inp);
    filt.appendChild(td);
  });
  document.getElementById("more").addEventListener("click", () => { shown += PAGE; render(); });
  render();
})();
