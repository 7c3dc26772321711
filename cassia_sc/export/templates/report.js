// Search, filter and sort the cluster cards. Reads only data attributes and writes only
// attributes, hidden flags, node order and plain text: model text is never parsed as HTML.
(function () {
  "use strict";
  var grid = document.getElementById("cards");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var search = document.getElementById("search");
  var status = document.getElementById("status");
  var validation = document.getElementById("validation");
  var agreement = document.getElementById("agreement");  // only after repeated runs
  var scored = document.getElementById("scored");  // only when scored
  var sort = document.getElementById("sort");
  var count = document.getElementById("count");
  var empty = document.getElementById("empty");
  var natural = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function matches(card, term) {
    var data = card.dataset;
    return (!term || data.search.indexOf(term) !== -1) &&
      (status.value === "all" || data.status === status.value) &&
      (validation.value === "all" || data.validation === validation.value) &&
      (!agreement || agreement.value === "all" || data.flagged === "yes") &&
      (!scored || scored.value === "all" || data.scoreBand === scored.value);
  }

  function filter() {
    var term = search.value.trim().toLowerCase();
    var shown = 0;
    for (var i = 0; i < cards.length; i++) {
      var visible = matches(cards[i], term);
      cards[i].hidden = !visible;
      if (visible) { shown++; }
    }
    count.textContent = shown + " of " + cards.length + " clusters";
    empty.hidden = shown !== 0;
  }

  function reorder() {
    var key = sort.value;
    var ordered = cards.slice().sort(function (a, b) {
      if (key === "cluster") { return natural.compare(a.dataset.cluster, b.dataset.cluster); }
      if (key === "score") {  // lowest first; clusters without a score last
        var left = a.dataset.score === "" ? Infinity : Number(a.dataset.score);
        var right = b.dataset.score === "" ? Infinity : Number(b.dataset.score);
        return (left - right) || a.dataset.order - b.dataset.order;
      }
      if (key === "type") {
        return natural.compare(a.dataset.type || "\uffff", b.dataset.type || "\uffff") ||
          a.dataset.order - b.dataset.order;
      }
      return a.dataset.order - b.dataset.order;
    });
    var fragment = document.createDocumentFragment();
    ordered.forEach(function (card) { fragment.appendChild(card); });
    grid.appendChild(fragment);
  }

  var pending = null;
  search.addEventListener("input", function () {
    clearTimeout(pending);
    pending = setTimeout(filter, 80);  // type freely over hundreds of cards
  });
  status.addEventListener("change", filter);
  validation.addEventListener("change", filter);
  if (agreement) { agreement.addEventListener("change", filter); }
  if (scored) { scored.addEventListener("change", filter); }
  sort.addEventListener("change", reorder);
  filter();
})();
