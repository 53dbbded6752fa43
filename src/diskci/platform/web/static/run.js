/* diskci dashboard: follow a CI run (its jobs, steps, build stages and one job's log) as it grows.
   Our own small script (no third-party front-end code); it polls GET /runs/<id>/live?job=&offset=. */
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root) { return; }
  var runId = root.dataset.run;
  var job = root.dataset.job;
  var log = document.getElementById("log");
  var logState = document.getElementById("log-state");
  var stageBody = document.querySelector("#stages tbody");
  var offset = 0;
  var stages = new Map();
  var POLL_MS = 1000;

  function word(status, conclusion) { return (conclusion || status || "").replace("_", " "); }

  function setBadge(el, status, conclusion) {
    if (!el) { return; }
    el.className = el.className.replace(/\bci-\S+/g, "").trim() + " ci-" + (conclusion || status);
    el.textContent = word(status, conclusion);
  }

  function when(iso) { return iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|[+-]\d\d:\d\d)$/, "") : "—"; }

  function applyRun(run) {
    setBadge(document.getElementById("run-status"), run.status, run.conclusion);
    document.getElementById("run-started").textContent = when(run.started_at);
    document.getElementById("run-completed").textContent = when(run.completed_at);
    if (run.publication_id !== null) {
      var cell = document.getElementById("run-publication");
      if (!cell.querySelector("a")) {
        var a = document.createElement("a");
        a.href = "/publications/" + run.publication_id;
        a.textContent = "#" + run.publication_id;
        cell.replaceChildren(a);
      }
    }
    root.dataset.status = run.status;
    if (run.status === "completed") {
      var cancel = document.getElementById("cancel");
      if (cancel) { cancel.remove(); }
    }
    run.jobs.forEach(function (j) {
      var section = Array.prototype.find.call(document.querySelectorAll("section.job"), function (s) {
        return s.dataset.jobName === j.name;
      });
      if (!section) { return; }
      setBadge(section.querySelector(".job-status"), j.status, j.conclusion);
      var steps = section.querySelector("ol.steps");
      var items = j.steps.map(function (s) {
        var li = document.createElement("li");
        li.className = "step ci-" + (s.conclusion || s.status);
        li.append(s.name + " ");
        var state = document.createElement("span");
        state.className = "sub";
        state.textContent = word(s.status, s.conclusion);
        li.append(state);
        return li;
      });
      steps.replaceChildren.apply(steps, items);
    });
  }

  function applyStages(events) {
    if (!events.length) { return; }
    events.forEach(function (e) {
      var key = e.stage + " (" + e.arch + ")";
      var known = stages.get(key);
      var state = e.state;
      if (state === "done" && known && known.state === "cached") { state = "cached"; }
      stages.set(key, { state: state, seconds: e.seconds, started: known ? known.started : Date.now() });
    });
    var rows = [];
    stages.forEach(function (value, key) {
      var tr = document.createElement("tr");
      tr.className = "stage-" + value.state;
      [key, value.state, value.seconds === null ? "…" : value.seconds.toFixed(1) + " s"].forEach(function (t) {
        var td = document.createElement("td");
        td.textContent = t;
        tr.append(td);
      });
      rows.push(tr);
    });
    stageBody.replaceChildren.apply(stageBody, rows);
  }

  function applyLog(page) {
    if (page.rows.length) {
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(page.rows.join("\n") + "\n");
      if (atEnd) { log.scrollTop = log.scrollHeight; }
    }
    offset = page.next_offset;
    applyStages(page.stages);
    logState.textContent = page.complete ? "complete · " + offset + " rows" : "following · " + offset + " rows";
  }

  function poll() {
    var url = "/runs/" + encodeURIComponent(runId) + "/live";
    if (job) { url += "?job=" + encodeURIComponent(job) + "&offset=" + offset; }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      })
      .then(function (answer) {
        if (!answer.ok) {
          if (logState) { logState.textContent = "stopped: " + answer.body.detail; }
          return;
        }
        applyRun(answer.body.run);
        var more = answer.body.run.status !== "completed";
        if (answer.body.log) {
          applyLog(answer.body.log);
          var page = answer.body.log;
          // a completed run whose log was never closed stops once no new row comes
          more = more || (!page.complete && page.rows.length > 0);
          if (!more && !page.complete) { logState.textContent = "ended · " + offset + " rows"; }
          if (more && page.rows.length >= 500) { setTimeout(poll, 0); return; }
        }
        if (more) { setTimeout(poll, POLL_MS); }
      })
      .catch(function (err) {
        if (logState) { logState.textContent = "retrying (" + err.message + ")"; }
        setTimeout(poll, POLL_MS * 3);
      });
  }

  poll();
}());
