// The knowledge base page's workspace: uploads several files (drag and drop or the picker),
// one request per file so that each gets its own answer, polls the documents' progress
// every 2 s while any is being indexed, and runs the retrieval test. Without JavaScript
// the picker form posts all files at once and the page reloads with a message per file.
(function () {
  "use strict";
  const POLL_MS = 2000;

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function start() {
    const box = document.getElementById("kb-workspace");
    if (!box) return;
    const tbody = box.querySelector("#kb-documents tbody");
    let polling = null;

    function renderRows(rows) {
      tbody.replaceChildren();
      if (!rows.length) {
        const tr = element("tr", null, "kb-empty");
        const td = element("td", box.dataset.noDocuments);
        td.colSpan = 5;
        tr.appendChild(td);
        tbody.appendChild(tr);
      }
      rows.forEach(function (row) {
        const tr = element("tr");
        tr.dataset.id = row.id;
        tr.dataset.status = row.status;
        tr.dataset.live = row.live ? "1" : "0";
        const name = element("td");
        const link = element("a", row.name);
        link.href = row.url;
        name.appendChild(link);
        tr.appendChild(name);
        tr.appendChild(element("td", row.status_text, "kb-doc-status"));
        const stage = element("td", null, "kb-doc-stage");
        if (row.live) {
          const bar = element("progress");
          bar.max = 100;
          bar.value = row.progress;
          stage.appendChild(bar);
          stage.appendChild(document.createTextNode(" " + row.stage_text));
        }
        tr.appendChild(stage);
        const passages = element("td", null, "kb-doc-passages");
        if (box.dataset.passageLinks === "1") {
          const passagesLink = element("a", row.passages);
          passagesLink.href = row.passages_url;
          passages.appendChild(passagesLink);
        } else {
          passages.textContent = row.passages;
        }
        tr.appendChild(passages);
        tr.appendChild(element("td", row.updated));
        tbody.appendChild(tr);
      });
    }

    function anyLive() {
      return tbody.querySelector('tr[data-live="1"]') !== null;
    }

    function poll() {
      polling = null;
      fetch(box.dataset.progressUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data) renderRows(data.documents);
          schedule();
        })
        .catch(schedule);
    }

    function schedule() {
      if (polling === null && anyLive()) polling = window.setTimeout(poll, POLL_MS);
    }

    // --- uploads
    const uploadForm = document.getElementById("kb-upload");
    if (uploadForm) {
      const input = document.getElementById("kb-files");
      const zone = document.getElementById("kb-dropzone");
      const results = document.getElementById("kb-upload-results");
      const token = uploadForm.querySelector("input[name=csrfmiddlewaretoken]").value;

      function note(text, ok) {
        results.appendChild(element("li", text, ok ? "kb-ok" : "kb-error"));
      }

      function uploadOne(file) {
        // Refused here too: the server would refuse the body only after it was sent.
        if (file.size > Number(box.dataset.maxBytes)) {
          note(file.name + ": " + box.dataset.tooLarge, false);
          return Promise.resolve();
        }
        const body = new FormData();
        body.append("csrfmiddlewaretoken", token);
        body.append("files", file, file.name);
        return fetch(uploadForm.action, {
          method: "POST",
          body: body,
          credentials: "same-origin",
          headers: { Accept: "application/json", "X-CSRFToken": token },
        })
          .then(function (response) {
            if (response.status === 413) return { error: box.dataset.tooLarge };
            return response.json().catch(function () {
              return null;
            });
          })
          .then(function (data) {
            if (!data || !data.files || !data.files.length) {
              note(file.name + ": " + ((data && data.error) || box.dataset.uploadFailed), false);
              return;
            }
            data.files.forEach(function (item) {
              note(item.message, item.ok);
            });
            renderRows(data.documents);
          })
          .catch(function () {
            note(file.name + ": " + box.dataset.uploadFailed, false);
          });
      }

      function uploadAll(files) {
        const list = Array.prototype.slice.call(files);
        if (!list.length) return;
        results.replaceChildren();
        const progress = element("li", box.dataset.uploading);
        results.appendChild(progress);
        list
          .reduce(function (chain, file) {
            return chain.then(function () {
              return uploadOne(file);
            });
          }, Promise.resolve())
          .then(function () {
            progress.remove();
            input.value = "";
            schedule();
          });
      }

      uploadForm.addEventListener("submit", function (event) {
        event.preventDefault();
        uploadAll(input.files);
      });
      ["dragenter", "dragover"].forEach(function (name) {
        zone.addEventListener(name, function (event) {
          event.preventDefault();
          zone.classList.add("kb-dragover");
        });
      });
      zone.addEventListener("dragleave", function () {
        zone.classList.remove("kb-dragover");
      });
      zone.addEventListener("drop", function (event) {
        event.preventDefault();
        zone.classList.remove("kb-dragover");
        uploadAll(event.dataTransfer.files);
      });
    }

    // --- retrieval test
    const searchForm = document.getElementById("kb-retrieval");
    if (searchForm) {
      const output = document.getElementById("kb-retrieval-results");
      searchForm.addEventListener("submit", function (event) {
        event.preventDefault();
        const token = searchForm.querySelector("input[name=csrfmiddlewaretoken]").value;
        fetch(searchForm.action, {
          method: "POST",
          body: new FormData(searchForm),
          credentials: "same-origin",
          headers: { Accept: "application/json", "X-CSRFToken": token },
        })
          .then(function (response) {
            return response.json();
          })
          .then(function (data) {
            output.replaceChildren();
            if (data.error) output.appendChild(element("p", data.error, "kb-error"));
            Object.keys(data.errors || {}).forEach(function (field) {
              data.errors[field].forEach(function (message) {
                output.appendChild(element("p", message, "kb-error"));
              });
            });
            if (!data.hits) return;
            if (!data.hits.length) output.appendChild(element("p", box.dataset.noHits));
            data.hits.forEach(function (hit, index) {
              const item = element("div", null, "kb-hit");
              const head = element("p");
              const link = element("a", "[" + (index + 1) + "] " + hit.title);
              link.href = hit.url + "#passage-" + hit.chunk_id;
              head.appendChild(link);
              if (hit.heading) head.appendChild(document.createTextNode(" · " + hit.heading));
              head.appendChild(
                element(
                  "span",
                  " · " + box.dataset.score + " " + hit.score.toFixed(4) + " · " +
                    box.dataset.foundBy + " " + hit.method,
                  "kb-hit-meta"
                )
              );
              item.appendChild(head);
              item.appendChild(element("div", hit.text, "kb-hit-text"));
              output.appendChild(item);
            });
          })
          .catch(function () {
            output.replaceChildren(element("p", box.dataset.uploadFailed, "kb-error"));
          });
      });
    }

    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
