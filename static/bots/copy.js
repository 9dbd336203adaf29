// Copy-to-clipboard buttons on admin pages: <button data-copy-target="element-id">.
// The button says "copied" for a moment (data-copied-label); without the Clipboard API
// (plain http on a non-local address), or when it refuses, the text is copied through a
// selection instead.
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    // Refused when the page lacks focus or permission: fall back to the selection.
    return navigator.clipboard.writeText(text).catch(function () { return copyBySelection(text); });
  }
  return copyBySelection(text);
}

function copyBySelection(text) {
  return new Promise(function (resolve, reject) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const done = document.execCommand("copy");
    document.body.removeChild(area);
    if (done) resolve(); else reject(new Error("copy refused"));
  });
}

document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget);
  if (!source) return;
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  copyText(source.textContent.trim()).then(function () {
    button.classList.add("copied");
    button.textContent = button.dataset.copiedLabel || label;
    setTimeout(function () {
      button.classList.remove("copied");
      button.textContent = label;
    }, 2000);
  });
});
