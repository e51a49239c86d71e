// Sortable tables: click a header to sort the body rows by that column's data-value (numbers or text).
document.querySelectorAll("table.sortable").forEach((table) => {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) => {
    th.addEventListener("click", () => {
      const descending = !th.classList.contains("sorted-desc");
      headers.forEach((other) => other.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(descending ? "sorted-desc" : "sorted-asc");
      const numeric = th.dataset.sort === "number";
      const body = table.tBodies[0];
      const key = (row) => row.cells[column].dataset.value ?? row.cells[column].textContent;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (numeric) {
          const nx = x === "" ? -Infinity : Number(x), ny = y === "" ? -Infinity : Number(y);
          return descending ? ny - nx : nx - ny;
        }
        return descending ? y.localeCompare(x) : x.localeCompare(y);
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
});
