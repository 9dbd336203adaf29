// The test chat on a bot's page (apps.bots.admin_trial): POST the question, then poll the
// turn's state until it ends, showing the answer as it streams, its sources with scores,
// the policy decisions and the timings. Text is set with textContent, never as HTML.
(function () {
  const form = document.getElementById("test-chat");
  if (!form) return;
  const thread = document.getElementById("test-chat-thread");
  const labels = form.dataset;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function seconds(value) {
    return value === null || value === undefined ? "—" : value.toFixed(2);
  }

  function render(bubble, state) {
    bubble.replaceChildren();
    const meta = element("div", "chat-meta");
    meta.append(element("span", "chat-badge test-chat-status", state.status_label));
    bubble.append(meta);
    if (state.reasoning) {
      const think = element("details", "chat-think");
      think.append(element("summary", "", labels.reasoningLabel), element("div", "chat-text", state.reasoning));
      bubble.append(think);
    }
    bubble.append(element("div", "chat-text chat-answer test-chat-answer", state.content || (state.finished ? state.error : labels.waitingLabel)));
    if (state.decisions.length) {
      const list = element("div", "test-chat-decisions");
      list.append(element("strong", "", labels.policiesLabel));
      state.decisions.forEach(function (hit) {
        list.append(element("div", "chat-policy-hit", hit.policy + " · " + hit.word + " (" + hit.label + ") → " + hit.action));
      });
      bubble.append(list);
    }
    if (state.sources.length) {
      const list = element("div", "chat-citations test-chat-sources");
      list.append(element("strong", "", labels.sourcesLabel));
      state.sources.forEach(function (source) {
        const item = element("details", "chat-citation");
        const score = source.score === null ? "" : " · " + labels.scoreLabel + " " + source.score.toFixed(3);
        item.append(element("summary", "", "[" + source.number + "] " + source.title + (source.heading ? " · " + source.heading : "") + " (" + source.knowledge_base + score + ")"));
        if (source.passage) item.append(element("div", "chat-passage", source.passage));
        list.append(item);
      });
      bubble.append(list);
    }
    if (state.finished) {
      const timings = state.timings;
      const text = labels.secondsLabel
        .replace("{queued}", seconds(timings.queued))
        .replace("{first}", seconds(timings.first_token))
        .replace("{total}", seconds(timings.total));
      bubble.append(element("div", "chat-meta test-chat-timings", labels.timingsLabel + ": " + text));
    }
  }

  function poll(url, bubble) {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (state) {
        render(bubble, state);
        if (!state.finished) setTimeout(function () { poll(url, bubble); }, 500);
        else bubble.dataset.finished = "1";
      })
      .catch(function () { setTimeout(function () { poll(url, bubble); }, 2000); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const data = new FormData(form);
    const asker = data.get("external") ? form.querySelector("#test-chat-external").parentElement.textContent.trim() : data.get("userid");
    const turn = element("div", "chat-turn chat-turn-test");
    const question = element("div", "chat-bubble chat-asker");
    const meta = element("div", "chat-meta");
    meta.append(element("span", "chat-who", asker || ""));
    question.append(meta, element("div", "chat-text", data.get("question") || ""));
    const answer = element("div", "chat-bubble chat-bot test-chat-reply");
    turn.append(question, answer);
    thread.append(turn);
    fetch(form.action, {
      method: "POST",
      body: data,
      headers: { "X-CSRFToken": data.get("csrfmiddlewaretoken"), Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) { return response.json().then(function (body) { return [response.ok, body]; }); })
      .then(function (result) {
        const ok = result[0], body = result[1];
        if (!ok) {
          const errors = body.errors ? Object.values(body.errors).flat().join(" ") : "";
          answer.append(element("div", "errornote test-chat-error", labels.errorLabel + " " + errors));
          answer.dataset.finished = "1";
          return;
        }
        answer.dataset.turn = body.turn;
        render(answer, body);
        if (body.finished) answer.dataset.finished = "1";
        else poll(body.poll, answer);
        form.querySelector("#test-chat-question").value = "";
      })
      .catch(function () {
        answer.append(element("div", "errornote test-chat-error", labels.errorLabel));
      });
  });
})();
