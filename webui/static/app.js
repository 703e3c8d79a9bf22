// The page: picks a query photo, asks /api/recommend, renders the results, records views on click.

const $ = (selector) => document.querySelector(selector);

const state = {
  query: null,            // the query photo as a Blob
  previousRanks: new Map(), // product id -> rank in the last list for the same photo
};

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function showMessage(text, kind = "error") {
  const message = $("#message");
  message.textContent = text;
  message.className = kind;
  message.hidden = false;
}

function hideMessage() {
  $("#message").hidden = true;
}

// Calls a JSON endpoint; failures become an Error whose message is meant for people.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Error("The web page's server cannot be reached; is it still running?");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(body?.error ?? `The web page's server answered ${response.status} ${response.statusText}.`);
  }
  return body;
}

function userId() {
  return $("#user-id").value.trim();
}

function score(value) {
  return value.toFixed(3);
}

function changeBadge(productId, rank) {
  if (state.previousRanks.size === 0) return "";
  const before = state.previousRanks.get(productId);
  if (before === undefined) return "new";
  if (before === rank) return "";
  return before > rank ? `▲${before - rank}` : `▼${rank - before}`;
}

function resultCard(item, rank) {
  const scores = element("dl", { class: "scores" },
    element("dt", {}, "score"), element("dd", {}, score(item.score)),
    element("dt", {}, "visual"), element("dd", {}, score(item.visual_score)),
    element("dt", {}, "history"), element("dd", {}, score(item.history_score)),
    element("dt", {}, "category"), element("dd", {}, score(item.category_score)),
    element("dt", {}, "popular"), element("dd", {}, score(item.popularity_score)));
  const button = element("button", {
    type: "button", class: "result", "data-product-id": item.product_id,
    "data-history-score": String(item.history_score), title: "Record a view of this product and re-rank",
  },
  element("img", { src: item.image_url, alt: `${item.category} ${item.product_id}`, loading: "lazy" }),
  element("span", { class: "change" }, changeBadge(item.product_id, rank)),
  element("span", { class: "product-id" }, item.product_id),
  element("span", { class: "category" }, item.category),
  element("span", { class: "reasons" }, item.reasons.join(" · ")),
  scores);
  button.addEventListener("click", () => recordView(item.product_id));
  return element("li", {}, button);
}

function renderResults(result) {
  $("#model").textContent = `model: ${result.model}`;
  const degraded = $("#degraded");
  degraded.hidden = result.degraded.length === 0;
  degraded.textContent = `Skipped: ${result.degraded.join(", ")} (a backend did not answer); ` +
    "the list is purely visual.";
  $("#results").replaceChildren(...result.items.map((item, rank) => resultCard(item, rank)));
  if (result.items.length === 0) showMessage("No catalog product matches this query and filter.", "info");
  state.previousRanks = new Map(result.items.map((item, rank) => [item.product_id, rank]));
}

async function refreshHistory() {
  const user = userId();
  $("#history-panel").hidden = !user;
  if (!user) return;
  try {
    const { views } = await api(`/api/history?user_id=${encodeURIComponent(user)}`);
    $("#history").replaceChildren(...views.map((view) => element("li", { "data-product-id": view.product_id },
      element("img", { src: view.image_url, alt: view.product_id, title: view.product_id }))));
  } catch (error) {
    showMessage(error.message);
  }
}

async function recommend() {
  if (!state.query) {
    showMessage("Upload a photo or pick an example first.", "info");
    return;
  }
  const form = new FormData();
  form.append("image", state.query, "query");
  form.append("user_id", userId());
  form.append("limit", $("#limit").value);
  form.append("category", $("#category").value);
  const panel = $("#results-panel");
  panel.setAttribute("aria-busy", "true");
  $("#recommend").disabled = true;
  try {
    const result = await api("/api/recommend", { method: "POST", body: form });
    hideMessage();
    renderResults(result);
  } catch (error) {
    $("#results").replaceChildren();
    $("#degraded").hidden = true;
    state.previousRanks = new Map();
    showMessage(error.message);
  } finally {
    $("#recommend").disabled = false;
    await refreshHistory();
    panel.setAttribute("aria-busy", "false");
  }
}

async function recordView(productId) {
  const user = userId();
  if (!user) {
    showMessage("Enter a user id to record views: anonymous shoppers have no history.", "info");
    $("#user-id").focus();
    return;
  }
  try {
    await api("/api/views", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: user, product_id: productId }),
    });
  } catch (error) {
    showMessage(error.message);
    return;
  }
  await recommend();
  if ($("#message").hidden) {
    showMessage(`Recorded a view of ${productId} for ${user}; badges show how the list moved.`, "info");
  }
}

function useQuery(blob) {
  state.query = blob;
  state.previousRanks = new Map();
  const preview = $("#query-image");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  $("#query-panel").hidden = false;
  return recommend();
}

async function loadOptions() {
  try {
    const options = await api("/api/options");
    $("#category-names").replaceChildren(...options.categories.map((name) => element("option", { value: name })));
    $("#limit").value = options.default_limit;
    $("#limit").max = options.max_limit;
    $("#examples").replaceChildren(...options.examples.map((example) => {
      const button = element("button", { type: "button", class: "example", title: example.category },
        element("img", { src: example.image_url, alt: `example: ${example.category}` }));
      button.addEventListener("click", async () => {
        const response = await fetch(example.image_url);
        if (response.ok) await useQuery(await response.blob());
        else showMessage(`The example image of ${example.category} could not be loaded.`);
      });
      return button;
    }));
  } catch (error) {
    showMessage(error.message);
  }
}

$("#photo").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) useQuery(file);
});
$("#query-form").addEventListener("submit", (event) => {
  event.preventDefault();
  recommend();
});
$("#user-id").addEventListener("change", refreshHistory);
loadOptions();
