// deskstream web chat widget: plain JS, no build step.
// Keeps the visitor id, the conversation id, the transcript and the unacknowledged
// messages in localStorage, so a reload or a lost connection resumes the same chat and
// resends what the desk has not confirmed (same message ids: never counted twice).
(function () {
  "use strict";
  var KEY = "deskstream.webchat.v1";
  var state = load();
  // An embedding site that knows the visitor may pass their name: widget/?name=Maria
  var given = new URLSearchParams(window.location.search).get("name");
  if (given) state.name = given.slice(0, 80);
  var socket = null;
  var backoff = 500;
  var log = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var connEl = document.getElementById("connection");
  var input = document.getElementById("input");

  function load() {
    try {
      var s = JSON.parse(localStorage.getItem(KEY) || "{}");
      s.transcript = s.transcript || [];
      s.outbox = s.outbox || [];
      s.seen = s.seen || [];
      return s;
    } catch (e) {
      return { transcript: [], outbox: [], seen: [] };
    }
  }
  function save() { localStorage.setItem(KEY, JSON.stringify(state)); }
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    return (Date.now().toString(36) + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2)).slice(0, 32);
  }

  function render() {
    log.innerHTML = "";
    state.transcript.forEach(function (entry) {
      var li = document.createElement("li");
      li.className = entry.kind + (entry.pending ? " pending" : "");
      li.textContent = entry.text;
      if (entry.id) li.dataset.id = entry.id;
      log.appendChild(li);
    });
    log.scrollTop = log.scrollHeight;
  }
  function add(kind, text, id, pending) {
    state.transcript.push({ kind: kind, text: text, id: id || null, pending: !!pending });
    save();
    render();
  }

  function describe(status) {
    if (status.state === "queued") {
      var text = "All agents are busy. You are number " + status.position + " in the queue";
      if (status.estimated_wait_s != null) {
        text += " (about " + Math.max(1, Math.round(status.estimated_wait_s / 60)) + " min)";
      }
      return text + ".";
    }
    if (status.state === "assigned") return "An agent joined the chat" + (status.agent_id ? " (" + status.agent_id + ")" : "") + ".";
    if (status.state === "closed") return "This conversation was closed. Write again to reopen it.";
    return "Connecting you with an agent…";
  }
  function showStatus(status) {
    var text = describe(status);
    statusEl.textContent = text;
    statusEl.dataset.state = status.state;
    if (status.position != null) statusEl.dataset.position = status.position;
    var mark = status.state + ":" + (status.agent_id || "") + ":" + (status.position || "");
    if (mark !== state.lastStatus && status.state !== "waiting") {
      state.lastStatus = mark;
      add("system", text);
    }
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function onFrame(frame) {
    if (frame.type === "welcome") {
      state.visitor_id = frame.visitor_id;
      state.conversation_id = frame.conversation_id;
      save();
      state.outbox.forEach(function (m) { send({ type: "message", id: m.id, text: m.text }); });
    } else if (frame.type === "ack") {
      state.outbox = state.outbox.filter(function (m) { return m.id !== frame.id; });
      state.transcript.forEach(function (e) { if (e.id === frame.id) e.pending = false; });
      save();
      render();
    } else if (frame.type === "status") {
      showStatus(frame);
    } else if (frame.type === "reply") {
      if (state.seen.indexOf(frame.reply_id) < 0) {
        state.seen.push(frame.reply_id);
        if (state.seen.length > 500) state.seen = state.seen.slice(-500);
        add("agent", frame.text, frame.reply_id);
      }
      send({ type: "delivered", reply_id: frame.reply_id });
    } else if (frame.type === "error") {
      connEl.textContent = "problem: " + frame.error;
    }
  }

  function connect() {
    var url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(url.toString());
    socket.onopen = function () {
      backoff = 500;
      connEl.textContent = "connected";
      send({ type: "hello", visitor_id: state.visitor_id, conversation_id: state.conversation_id, name: state.name });
    };
    socket.onmessage = function (event) {
      try { onFrame(JSON.parse(event.data)); } catch (e) { connEl.textContent = "bad frame"; }
    };
    socket.onclose = function () {
      connEl.textContent = "reconnecting…";
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  document.getElementById("composer").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    var id = newId();
    state.outbox.push({ id: id, text: text });
    add("me", text, id, true);
    send({ type: "message", id: id, text: text });
  });
  setInterval(function () { send({ type: "ping" }); }, 25000);

  render();
  if (state.lastStatus) statusEl.textContent = "";
  connect();
})();
