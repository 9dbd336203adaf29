// The model profile's "Test load" button: POSTs to the trial-load endpoint, shows its report.
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-trial-load-url]");
  if (!button) return;
  const result = document.getElementById("trial-load-result");
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
  const label = button.textContent;
  button.disabled = true;
  button.textContent = button.dataset.busyLabel;
  fetch(button.dataset.trialLoadUrl, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRFToken": csrf ? csrf.value : "", Accept: "application/json" },
  })
    .then(function (response) { return response.json(); })
    .then(function (data) {
      result.textContent = data.text;
      result.classList.toggle("errornote", !data.ok);
    })
    .catch(function (error) { result.textContent = String(error); })
    .finally(function () {
      button.disabled = false;
      button.textContent = label;
    });
});
