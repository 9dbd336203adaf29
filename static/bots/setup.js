// Guided bot setup: the callback URL follows the slug, required fields follow the connection
// mode (and so do the console steps), and Token/EncodingAESKey can be generated.
document.addEventListener("DOMContentLoaded", function () {
  const steps = document.getElementById("bot-setup-steps");
  if (!steps) return;
  const mode = document.getElementById("id_connection_mode");
  const slug = document.getElementById("id_slug");
  const preview = document.querySelector("#callback-url[data-url-template]");

  function showPreview() {
    if (!preview || !slug) return;
    const value = slug.value.trim() || "…";
    preview.textContent = preview.dataset.urlTemplate.replace(preview.dataset.placeholder, value);
  }

  function currentMode() {
    return mode && mode.value ? mode.value : "callback";
  }

  function markRequired() {
    const active = currentMode();
    document.querySelectorAll("[data-required-mode]").forEach(function (input) {
      const label = document.querySelector('label[for="' + input.id + '"]');
      if (label) label.classList.toggle("required", input.dataset.requiredMode === active);
    });
    steps.querySelectorAll("[data-steps-mode]").forEach(function (block) {
      block.hidden = block.dataset.stepsMode !== active;
    });
  }

  function addGenerateButton(input) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.textContent = steps.dataset.generateLabel;
    button.dataset.generateFor = input.id;
    button.addEventListener("click", function () {
      const csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
      fetch(steps.dataset.generateUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrf ? csrf.value : "", Accept: "application/json" },
      })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (!data) return;
          input.value = data[input.dataset.generate];
          // Shown, since the same value must be typed into WeCom's console.
          input.type = "text";
        });
    });
    input.insertAdjacentElement("afterend", button);
  }

  function addShowButton(input) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.textContent = steps.dataset.showLabel;
    button.addEventListener("click", function () {
      input.type = input.type === "password" ? "text" : "password";
    });
    input.insertAdjacentElement("afterend", button);
  }

  document.querySelectorAll("input[data-generate]").forEach(addGenerateButton);
  document.querySelectorAll('input[type="password"][data-required-mode]').forEach(addShowButton);
  if (slug) ["input", "change"].forEach(function (kind) { slug.addEventListener(kind, showPreview); });
  // The admin's prepopulate script fills the slug from the name (on keyup and change)
  // without an event on the slug: follow the name too, after that script has run.
  const name = document.getElementById("id_name");
  if (name) {
    ["input", "keyup", "change"].forEach(function (kind) {
      name.addEventListener(kind, function () { setTimeout(showPreview, 0); });
    });
  }
  if (mode) mode.addEventListener("change", markRequired);
  showPreview();
  markRequired();
});
