// trio-gearman monitor: fetch the JSON API every poll interval and redraw the tables.
// No framework, no external resource; every text goes in through textContent.
"use strict";

(function () {
  const root = document.getElementById("monitor");
  const api = new URL(root.dataset.api, window.location.href);
  const interval = Math.max(Number(root.dataset.interval) || 2000, 250);
  const form = document.getElementById("filters");
  const functionInput = document.getElementById("filter-function");
  const serverBoxes = Array.from(form.querySelectorAll("input[name=server]"));
  let timer = null;
  let generation = 0;

  function query() {
    const params = new URLSearchParams();
    const pattern = functionInput.value.trim();
    if (pattern) params.set("function", pattern);
    const checked = serverBoxes.filter((box) => box.checked).map((box) => box.value);
    if (checked.length !== serverBoxes.length) {
      // None checked shows none: ask for a server that is not watched.
      (checked.length ? checked : ["-"]).forEach((server) => params.append("server", server));
    }
    return params;
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function count(value) {
    return value === null || value === undefined ? "–" : String(value);
  }

  function rate(value) {
    if (value === null || value === undefined) return ["–", "num"];
    const text = (value > 0 ? "+" : "") + value.toFixed(2);
    return [text, value > 0 ? "num rising" : value < 0 ? "num falling" : "num"];
  }

  function row(cells, className) {
    const tr = element("tr", null, className);
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = element("td");
        td.appendChild(cell);
        tr.appendChild(td);
      } else if (Array.isArray(cell)) {
        tr.appendChild(element("td", cell[0], cell[1]));
      } else {
        tr.appendChild(element("td", cell));
      }
    }
    return tr;
  }

  function fill(tableId, rows, columns, empty) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows);
    if (!rows.length) {
      const td = element("td", empty, "empty");
      td.colSpan = columns;
      const tr = element("tr");
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function localTime(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  function state(server) {
    const box = element("span");
    if (server.up === null) {
      box.appendChild(element("span", "not polled yet", "badge unknown"));
      return box;
    }
    box.appendChild(element("span", server.up ? "up" : "down", server.up ? "badge up" : "badge down"));
    if (server.age !== null && server.age * 1000 > 3 * interval) {
      box.appendChild(element("span", "stale", "badge stale"));
    }
    if (!server.up) box.appendChild(element("span", " " + server.error, "reason"));
    if (server.since) box.appendChild(element("span", " since " + localTime(server.since), "since"));
    return box;
  }

  function waitingCells(f) {
    return [
      [count(f.waiting), "num"],
      [count(f.high), "num"],
      [count(f.normal), "num"],
      [count(f.low), "num"],
      [count(f.running), "num"],
      [count(f.workers), f.no_workers ? "num alert" : "num"],
    ];
  }

  function render(data) {
    fill(
      "servers-table",
      data.servers.map((s) =>
        row(
          [
            s.server,
            state(s),
            s.version || "–",
            [count(s.connections), "num"],
            [count(s.worker_connections), "num"],
            [s.up ? s.functions.length : "–", "num"],
            s.polled_at ? localTime(s.polled_at) + " (" + s.age.toFixed(1) + " s ago)" : "–",
          ],
          s.up === false ? "server-down" : "",
        ),
      ),
      7,
      "no server matches the filter",
    );

    fill(
      "functions-table",
      data.functions.map((f) =>
        row(
          [f.function, ...waitingCells(f), rate(f.waiting_rate), f.servers.join(", ")],
          f.no_workers ? "no-workers" : "",
        ),
      ),
      9,
      "no function matches",
    );
    const t = data.totals;
    const foot = document.querySelector("#functions-table tfoot");
    foot.replaceChildren(
      row(
        [
          "Total",
          [count(t.waiting), "num"],
          "",
          "",
          "",
          [count(t.running), "num"],
          [count(t.workers), "num"],
          rate(t.waiting_rate),
          t.up + " of " + t.servers + " servers up",
        ],
        "totals",
      ),
    );

    const perServer = [];
    for (const s of data.servers) {
      for (const f of s.functions) {
        perServer.push(
          row(
            [s.server, f.function, ...waitingCells(f), rate(f.waiting_rate), rate(f.total_rate)],
            f.no_workers ? "no-workers" : "",
          ),
        );
      }
    }
    fill("server-functions-table", perServer, 10, "no function matches");

    fill(
      "workers-table",
      data.workers.map((w) =>
        row([w.server, [w.fd, "num"], w.address, w.client_id, w.functions.join(" ")]),
      ),
      5,
      "no worker matches",
    );

    document.getElementById("total-servers").textContent =
      t.up + "/" + t.servers + " servers up";
    document.getElementById("total-servers").className = t.down ? "chip alert" : "chip";
    document.getElementById("total-waiting").textContent = "waiting " + t.waiting;
    document.getElementById("total-running").textContent = "running " + t.running;
    document.getElementById("total-workers").textContent = "workers " + t.workers;
    const [trend] = rate(t.waiting_rate);
    document.getElementById("total-rate").textContent = "backlog " + trend + " jobs/s";
    const updated = document.getElementById("updated");
    updated.textContent = "updated " + localTime(data.generated);
    updated.className = "updated";
  }

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    const url = new URL(api);
    url.search = query().toString();
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      if (mine === generation) render(data);
    } catch (error) {
      if (mine === generation) {
        const updated = document.getElementById("updated");
        updated.textContent = "the monitor does not answer (" + error.message + "); retrying";
        updated.className = "updated alert";
      }
    }
    if (mine === generation) timer = setTimeout(refresh, interval);
  }

  function filtersChanged() {
    const search = query().toString();
    const page = window.location.pathname + (search ? "?" + search : "");
    window.history.replaceState(null, "", page);
    refresh();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filtersChanged();
  });
  functionInput.addEventListener("input", filtersChanged);
  serverBoxes.forEach((box) => box.addEventListener("change", filtersChanged));
  refresh();
})();
