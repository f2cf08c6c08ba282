// The chat page: asks POST /v1/sql, shows the SQL, its rows as a table (and a chart when they are one label
// column plus numbers), says in plain words why there is no answer, and sends right/wrong feedback to
// POST /v1/feedback. No build step, no outside resources.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const tokenField = document.getElementById("token");
const form = document.getElementById("ask");
const questionField = document.getElementById("question");
const executeField = document.getElementById("execute");
const sendButton = document.getElementById("send");
const conversation = document.getElementById("conversation");
const template = document.getElementById("turn-template");

tokenField.value = sessionStorage.getItem("text2sql-token") || "";
tokenField.addEventListener("change", () => sessionStorage.setItem("text2sql-token", tokenField.value.trim()));

const PLAIN = {
  refused: "The query was refused: it would do more than read data.",
  syntax_error: "The model wrote SQL that does not parse.",
  unknown_table: "The model used a table that does not exist.",
  unknown_column: "The model used a column that does not exist.",
  runtime_error: "The query failed when it ran.",
  timeout: "The query took too long and was stopped.",
};

async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = tokenField.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (err) {
    throw new Error("The server cannot be reached. Is it running?");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = (data.error && data.error.message) || response.statusText;
    const why = {
      401: "The server needs a valid token: type it in the Token field above.",
      413: "The question is too long.",
      429: "The server is busy right now: try again in a moment.",
    }[response.status];
    const error = new Error(why ? `${why} (${detail})` : detail);
    error.status = response.status;
    throw error;
  }
  return data;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = questionField.value.trim();
  if (!question) return;
  const turn = addTurn(question);
  questionField.value = "";
  sendButton.disabled = true;
  try {
    const answer = await call("/v1/sql", { question, execute: executeField.checked });
    showAnswer(turn, question, answer);
  } catch (err) {
    setStatus(turn, "error", err.message);
  } finally {
    sendButton.disabled = false;
    questionField.focus();
  }
});

questionField.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
});

function addTurn(question) {
  const turn = template.content.firstElementChild.cloneNode(true);
  turn.querySelector(".question").textContent = question;
  conversation.appendChild(turn);
  turn.scrollIntoView({ block: "end" });
  return turn;
}

function setStatus(turn, kind, text) {
  const status = turn.querySelector(".status");
  status.className = `status ${kind}`;
  status.textContent = text;
}

function showAnswer(turn, question, answer) {
  const sql = turn.querySelector(".sql");
  if (answer.sql) { sql.textContent = answer.sql; sql.hidden = false; }
  const message = turn.querySelector(".message");
  if (answer.error_kind) {
    const refused = answer.error_kind === "refused";
    turn.dataset.outcome = refused ? "refused" : "error";
    setStatus(turn, refused ? "refused" : "error", PLAIN[answer.error_kind] || "The query could not be used.");
    message.className = `message ${refused ? "refused" : "error"}`;
    message.textContent = answer.error;
    message.hidden = false;
  } else {
    turn.dataset.outcome = "ok";
    const rows = answer.rows ? ` · ${answer.rows.length}${answer.truncated ? "+" : ""} row(s)` : "";
    const retried = answer.retried ? " · corrected after a first error" : "";
    setStatus(turn, "ok", `Answer${rows}${retried}`);
  }
  if (answer.columns && answer.rows) {
    const chart = drawChart(answer.columns, answer.rows);
    if (chart) { turn.querySelector(".chart-box").appendChild(chart); turn.querySelector(".chart-box").hidden = false; }
    turn.querySelector(".table-box").appendChild(drawTable(answer.columns, answer.rows));
    turn.querySelector(".table-box").hidden = false;
  }
  if (answer.sql) setUpFeedback(turn, question, answer.sql);
}

function drawTable(columns, rows) {
  const table = document.createElement("table");
  table.className = "rows";
  const head = table.createTHead().insertRow();
  for (const name of columns) { const th = document.createElement("th"); th.textContent = name; head.appendChild(th); }
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const value of row) {
      const td = tr.insertCell();
      td.textContent = value === null ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
      if (typeof value === "number") td.className = "num";
    }
  }
  return table;
}

// A chart when the result is one label column followed by numeric columns: a line for dates, else bars.
function drawChart(columns, rows) {
  if (columns.length < 2 || rows.length < 2 || rows.length > 60) return null;
  const numeric = rows.every((r) => r.slice(1).every((v) => v === null || typeof v === "number"));
  if (!numeric || rows.every((r) => typeof r[0] === "number")) return null;
  const series = columns.slice(1, 4);
  const labels = rows.map((r) => (r[0] === null ? "" : String(r[0])));
  const values = rows.map((r) => r.slice(1, 1 + series.length).map((v) => v || 0));
  const max = Math.max(0, ...values.flat()), min = Math.min(0, ...values.flat());
  if (max === min) return null;
  const width = 640, height = 240, left = 56, bottom = 40, top = 12;
  const plotW = width - left - 8, plotH = height - top - bottom;
  const y = (v) => top + plotH * (max - v) / (max - min);
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                          "aria-label": `${series.join(", ")} by ${columns[0]}` });
  const colors = ["#1f6feb", "#e36209", "#1a7f37"];
  svg.appendChild(el("line", { x1: left, x2: width - 8, y1: y(0), y2: y(0), stroke: "#8c959f" }));
  for (const v of [max, min].filter((v) => v !== 0).concat([0])) {
    svg.appendChild(text(left - 4, y(v) + 4, formatNumber(v), "end"));
  }
  const step = plotW / rows.length;
  const isLine = labels.every((l) => /^\d{4}-\d{2}/.test(l));
  series.forEach((name, s) => {
    if (isLine) {
      const points = values.map((vals, i) => `${left + step * (i + 0.5)},${y(vals[s])}`).join(" ");
      svg.appendChild(el("polyline", { points, fill: "none", stroke: colors[s], "stroke-width": 2 }));
    } else {
      const barW = (step * 0.8) / series.length;
      values.forEach((vals, i) => {
        const x = left + step * i + step * 0.1 + barW * s;
        const rect = el("rect", { x, width: Math.max(barW, 1), y: Math.min(y(vals[s]), y(0)),
                                  height: Math.abs(y(vals[s]) - y(0)), fill: colors[s] });
        const title = el("title", {});
        title.textContent = `${labels[i]}: ${name} ${vals[s]}`;
        rect.appendChild(title);
        svg.appendChild(rect);
      });
    }
  });
  const every = Math.ceil(rows.length / 12);
  labels.forEach((label, i) => {
    if (i % every === 0) svg.appendChild(text(left + step * (i + 0.5), height - bottom + 14, label.slice(0, 12), "middle"));
  });
  series.forEach((name, s) => {
    const legend = text(left + 8 + s * 140, height - 6, `■ ${name}`, "start");
    legend.setAttribute("style", `fill: ${colors[s]}`);
    svg.appendChild(legend);
  });
  return svg;
}

function el(name, attrs) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function text(x, y, content, anchor) {
  const node = el("text", { x, y, "text-anchor": anchor });
  node.textContent = content;
  return node;
}

function formatNumber(v) {
  return Math.abs(v) >= 1000 ? v.toLocaleString(undefined, { maximumFractionDigits: 0 }) : String(+v.toFixed(2));
}

function setUpFeedback(turn, question, modelSql) {
  const box = turn.querySelector(".feedback");
  const correctionBox = turn.querySelector(".correction-box");
  const correction = turn.querySelector(".correction");
  const status = turn.querySelector(".feedback-status");
  box.hidden = false;
  const send = async (verdict, sql) => {
    status.hidden = false;
    status.className = "feedback-status";
    status.textContent = "Sending…";
    try {
      await call("/v1/feedback", { question, model_sql: modelSql, verdict, sql });
      status.className = "feedback-status ok";
      status.textContent = verdict === "right" ? "Thanks: marked right." : "Thanks: your correction was saved for review.";
      box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    } catch (err) {
      status.className = "feedback-status error";
      status.textContent = err.message;
    }
  };
  turn.querySelector(".mark-right").addEventListener("click", () => send("right", null));
  turn.querySelector(".mark-wrong").addEventListener("click", () => {
    correction.value = correction.value || modelSql;
    correctionBox.hidden = false;
    correction.focus();
  });
  turn.querySelector(".send-correction").addEventListener("click", () => send("wrong", correction.value.trim()));
}
