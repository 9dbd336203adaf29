// Copy-to-clipboard buttons on admin pages: <button data-copy-target="element-id">.
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget);
  if (!source) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.classList.add("copied");
    setTimeout(function () { button.classList.remove("copied"); }, 1500);
  });
});
