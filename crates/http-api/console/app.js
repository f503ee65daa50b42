// The greyrouter console: a client of the HTTP API (/api/v1), served by the router itself.
// No framework, no build step: views are functions that fetch and render into <main>.

const view = document.getElementById("view");
const notice = document.getElementById("notice");
let live = []; // streams and timers of the current view, closed when the view changes

// ---------- API ----------

function token() { return localStorage.getItem("greyrouter.token") || ""; }
function actorName() { return localStorage.getItem("greyrouter.actor") || ""; }

class ApiError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (token()) init.headers["authorization"] = `Bearer ${token()}`;
  if (actorName()) init.headers["x-greyrouter-actor"] = actorName();
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    if (response.status === 401) openTokenDialog();
    throw new ApiError(data || { status: response.status, title: response.statusText });
  }
  return data;
}

// ---------- helpers ----------

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    // Through the CSSOM: the console's content security policy refuses inline style attributes.
    else if (name === "style") element.style.cssText = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function say(message, error = false) {
  notice.textContent = message;
  notice.className = error ? "error" : "";
}

function failed(err) { say(err.message, true); }

function table(headers, rows, attributes = {}) {
  return h("table", attributes,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows));
}

function percent(basisPoints) { return `${(basisPoints / 100).toFixed(basisPoints % 100 ? 2 : 0)}%`; }

function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

function confirmWithReason(title, text) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const reason = document.getElementById("confirm-reason");
  reason.value = "";
  dialog.showModal();
  reason.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm" && reason.value.trim() ? reason.value.trim() : null);
    }, { once: true });
  });
}

async function allTenants() {
  const tenants = [];
  let pageToken = "";
  for (let page = 0; page < 50; page++) {
    const listed = await api("GET", `/api/v1/tenants?page_size=1000&page_token=${encodeURIComponent(pageToken)}`);
    tenants.push(...listed.tenants);
    pageToken = listed.next_page_token;
    if (!pageToken) break;
  }
  return tenants;
}

async function services() { return (await api("GET", "/api/v1/services")).items; }

function watchServices(names, onChange) {
  // EventSource cannot send a bearer token: with one, the views poll instead.
  if (token()) return;
  const query = names.length ? `?services=${encodeURIComponent(names.join(","))}` : "";
  const source = new EventSource(`/api/v1/watch${query}`);
  source.addEventListener("assignments", (event) => {
    const update = JSON.parse(event.data);
    if (!update.snapshot) onChange(update);
  });
  live.push(() => source.close());
}

function every(ms, task) {
  const timer = setInterval(task, ms);
  live.push(() => clearInterval(timer));
}

// ---------- views ----------

async function tenantsView() {
  const [tenants, known] = await Promise.all([allTenants(), services()]);
  const tiers = [...new Set(tenants.map((t) => t.tier).filter(Boolean))].sort();
  const regions = [...new Set(tenants.map((t) => t.region).filter(Boolean))].sort();
  const search = h("input", { id: "tenant-search", type: "search", placeholder: "id or name" });
  const tier = h("select", { id: "tenant-tier" }, h("option", { value: "" }, "any"), tiers.map((t) => h("option", { value: t }, t)));
  const region = h("select", { id: "tenant-region" }, h("option", { value: "" }, "any"), regions.map((r) => h("option", { value: r }, r)));
  const label = h("input", { id: "tenant-label", placeholder: "key=value" });
  const body = h("tbody");
  const shown = 100;
  const versions = new Map(); // tenant id -> its services, fetched once per view
  let generation = 0;
  async function render() {
    const mine = ++generation;
    const text = search.value.trim().toLowerCase();
    const at = label.value.indexOf("=");
    const [key, value] = at > 0 ? [label.value.slice(0, at), label.value.slice(at + 1)] : [null, null];
    const matching = tenants.filter((t) =>
      (!text || t.id.toLowerCase().includes(text) || (t.name || "").toLowerCase().includes(text))
      && (!tier.value || t.tier === tier.value)
      && (!region.value || t.region === region.value)
      && (!key || (t.labels || {})[key.trim()] === value.trim()));
    body.replaceChildren(...matching.slice(0, shown).map((t) => h("tr", { "data-tenant": t.id },
      h("td", {}, h("a", { href: `#/tenants/${encodeURIComponent(t.id)}` }, t.id)),
      h("td", {}, t.name), h("td", {}, t.tier), h("td", {}, t.region),
      h("td", {}, Object.entries(t.labels || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`))),
      h("td", { class: "versions" }, t.active ? "" : h("span", { class: "bad" }, "inactive")))));
    // Each shown tenant's versions, fetched once for the rows on screen (a newer render wins).
    await Promise.all(matching.slice(0, shown).map(async (t) => {
      try {
        if (!versions.has(t.id)) {
          versions.set(t.id, api("GET", `/api/v1/tenants/${encodeURIComponent(t.id)}/services`));
        }
        const detail = await versions.get(t.id);
        if (mine !== generation) return;
        const cell = body.querySelector(`tr[data-tenant="${CSS.escape(t.id)}"] td.versions`);
        if (cell) cell.replaceChildren(...detail.services.map((s) =>
          h("div", {}, `${s.service}: ${s.version} `, h("span", { class: "source" }, `(${s.source})`))));
      } catch (err) { /* out of scope or gone: the row stays */ }
    }));
    say(matching.length > shown ? `${matching.length} tenants match; the first ${shown} are shown` : "");
  }
  let pending = null;
  const later = () => { clearTimeout(pending); pending = setTimeout(() => render().catch(failed), 200); };
  for (const input of [search, tier, region, label]) input.addEventListener("input", later);
  view.replaceChildren(
    h("h1", {}, "Tenants"),
    h("p", {}, `${tenants.length} tenants, ${known.length} services.`),
    h("div", { class: "filters" },
      h("label", {}, "Search", search), h("label", {}, "Tier", tier),
      h("label", {}, "Region", region), h("label", {}, "Label", label)),
    h("table", { id: "tenants" },
      h("thead", {}, h("tr", {}, ["Tenant", "Name", "Tier", "Region", "Labels", "Versions"].map((n) => h("th", { scope: "col" }, n)))),
      body));
  await render();
}

async function tenantView(id) {
  const [detail, known] = await Promise.all([
    api("GET", `/api/v1/tenants/${encodeURIComponent(id)}/services`), services()]);
  let schema = null;
  try { schema = await api("GET", `/api/v1/tenants/${encodeURIComponent(id)}/schema`); } catch { schema = null; }
  const byName = Object.fromEntries(known.map((s) => [s.name, s]));
  const rows = detail.services.map((s) => {
    const select = h("select", { "data-service": s.service, "aria-label": `version of ${s.service}` },
      [...(byName[s.service]?.versions || [s.version])].map((v) => h("option", { value: v, selected: v === s.version }, v)));
    const schemaOf = schema?.services?.find((x) => x.service === s.service);
    return h("tr", { "data-service": s.service },
      h("td", {}, s.service),
      h("td", { class: "current" }, `${s.version} `, h("span", { class: "source" }, `(${s.source})`)),
      h("td", {}, select),
      h("td", {}, schemaOf ? `schema ${schemaOf.current} (needs ${schemaOf.required}, latest ${schemaOf.latest})` : "—"));
  });
  // Migrations run only where this router has schema migrations configured.
  const migrate = h("input", { type: "checkbox", id: "apply-migrate", checked: schema !== null, disabled: schema === null });
  const plans = h("div", { id: "plans" });
  async function changes() {
    return [...view.querySelectorAll("select[data-service]")]
      .map((select) => ({ service: select.dataset.service, version: select.value,
        current: detail.services.find((s) => s.service === select.dataset.service).version }))
      .filter((c) => c.version !== c.current);
  }
  async function preview() {
    const wanted = await changes();
    plans.replaceChildren();
    for (const change of wanted) {
      try {
        const plan = await api("POST", "/api/v1/schema/upgrades", {
          service: change.service, target_version: change.version, tenant_ids: [id], dry_run: true });
        const steps = plan.plans.flatMap((p) => p.steps || []);
        plans.append(h("p", {}, `${change.service} → ${change.version}: `,
          steps.length ? steps.map((s) => `${s.direction} ${s.version} ${s.name}`).join(", ") : "no migration needed"));
      } catch (err) {
        plans.append(h("p", { class: "source" }, `${change.service} → ${change.version}: ${err.message}`));
      }
    }
  }
  async function apply() {
    const wanted = await changes();
    if (!wanted.length) { say("nothing to change"); return; }
    try {
      for (const change of wanted) {
        await api("PUT", `/api/v1/tenants/${encodeURIComponent(id)}/services/${encodeURIComponent(change.service)}/version`,
          { version: change.version, migrate: migrate.checked }, { "if-match": `"${change.current}"` });
      }
      say(`applied: ${wanted.map((c) => `${c.service} → ${c.version}`).join(", ")}`);
      await tenantView(id);
    } catch (err) { failed(err); }
  }
  view.replaceChildren(
    h("h1", {}, `Tenant ${detail.tenant.id}`),
    h("p", {}, [detail.tenant.name, detail.tenant.tier, detail.tenant.region].filter(Boolean).join(" · "),
      detail.tenant.active ? "" : h("span", { class: "bad" }, " inactive")),
    table(["Service", "Current version", "Move to", "Schema"], rows, { id: "tenant-services" }),
    h("div", { class: "actions" },
      h("label", {}, schema === null ? "Schema migrations are not configured on this router" : "Run the schema migrations the versions need", migrate),
      h("button", { type: "button", id: "preview-upgrades", onclick: () => preview().catch(failed) }, "Show migrations"),
      h("button", { type: "button", class: "primary", id: "apply-upgrades", onclick: apply }, "Apply upgrades")),
    plans,
    h("p", { class: "source" }, `revision ${detail.revision}`));
}

async function servicesView() {
  const known = await services();
  const sections = await Promise.all(known.map(async (service) => {
    const [instances, stats] = await Promise.all([
      api("GET", `/api/v1/services/${encodeURIComponent(service.name)}/instances`),
      api("GET", `/api/v1/services/${encodeURIComponent(service.name)}/stats`)]);
    const statsOf = Object.fromEntries(stats.versions.map((v) => [v.version, v]));
    const select = h("select", { "aria-label": `default version of ${service.name}` },
      service.versions.map((v) => h("option", { value: v, selected: v === service.default_version }, v)));
    const setDefault = async () => {
      try {
        await api("PUT", `/api/v1/services/${encodeURIComponent(service.name)}/default-version`, { version: select.value });
        say(`${service.name}: default version ${select.value}`);
        await servicesView();
      } catch (err) { failed(err); }
    };
    return h("section", { "data-service": service.name },
      h("h2", {}, service.name),
      h("div", { class: "actions" }, `strategy ${service.strategy}; default version `, select,
        h("button", { type: "button", onclick: setDefault }, "Set default")),
      table(["Version", "Requests", "Error rate", "p99"], service.versions.map((v) => {
        const s = statsOf[v] || {};
        return h("tr", {}, h("td", {}, v, v === service.default_version ? h("span", { class: "tag" }, " default") : ""),
          h("td", {}, s.requests ?? 0),
          h("td", { class: s.error_rate > 0.05 ? "bad" : "" }, `${((s.error_rate || 0) * 100).toFixed(2)}%`),
          h("td", {}, s.p99_ms == null ? "—" : `${s.p99_ms} ms`));
      })),
      table(["Instance", "Version", "Address", "Region", "Weight", "Health"], instances.items.map((i) =>
        h("tr", {}, h("td", {}, i.id), h("td", {}, i.version), h("td", {}, i.address), h("td", {}, i.region),
          h("td", {}, i.weight),
          h("td", { class: i.healthy ? "good" : "bad" }, i.healthy ? `healthy (${i.health_score})` : "unhealthy")))));
  }));
  view.replaceChildren(h("h1", {}, "Services"), ...sections);
}

async function servicesLive() {
  await servicesView();
  // The outcome figures move with traffic: read them again every few seconds.
  every(5000, () => { if (!view.contains(document.activeElement) || document.activeElement === view) servicesView().catch(() => {}); });
}

function decisionText(decision) {
  const event = decision.event || {};
  const figures = (m) => m ? `${m.requests} req, ${(m.error_rate * 100).toFixed(2)}% errors, p99 ${m.p99_ms ?? "—"} ms` : "—";
  const action = event.action ? `${event.event}: ${event.action.kind}${event.action.reason ? ` (${event.action.reason})` : ""}` : event.event;
  return [when(decision.at_ms), action,
    percent(decision.basis_points), `canary ${figures(decision.canary)}`, `baseline ${figures(decision.baseline)}`,
    decision.note].filter(Boolean).join(" · ");
}

async function rolloutsView() {
  const known = await services();
  const container = h("div", { id: "rollouts" });
  async function render() {
    const lists = await Promise.all(known.map(async (s) =>
      (await api("GET", `/api/v1/services/${encodeURIComponent(s.name)}/rollouts`)).items));
    const rollouts = lists.flat();
    container.replaceChildren(...(rollouts.length ? rollouts.map((r) => {
      const plan = r.plan || {};
      const steps = plan.steps || [];
      const action = (name, dangerous) => h("button", {
        type: "button", class: dangerous ? "danger" : "", "data-action": name,
        onclick: async () => {
          let reason = "";
          if (dangerous) {
            reason = await confirmWithReason(`${name} rollout ${r.id}`, `${name} the rollout of ${r.service} to ${r.to_version}?`);
            if (!reason) return;
          }
          try {
            await api("POST", `/api/v1/services/${encodeURIComponent(r.service)}/rollouts/${encodeURIComponent(r.id)}/${name}`, { reason });
            await render();
          } catch (err) { failed(err); }
        } }, name);
      return h("section", { "data-rollout": r.id },
        h("h2", {}, `${r.service}: ${plan.from_version || "?"} → ${r.to_version} `, h("span", { class: "tag phase" }, plan.phase || "manual")),
        h("div", { class: "actions" },
          h("div", { class: "progress", role: "progressbar", "aria-valuenow": r.basis_points / 100, "aria-valuemin": 0, "aria-valuemax": 100 },
            h("span", { style: `width:${r.basis_points / 100}%` })),
          h("span", { class: "share" }, percent(r.basis_points)),
          h("span", {}, `step ${Math.min((plan.step || 0) + 1, steps.length)} of ${steps.length}: ${steps.map(percent).join(", ")}`),
          action("pause"), action("resume"), action("promote", true), action("abort", true)),
        h("ol", { reversed: true, class: "decisions" },
          (plan.decisions || []).slice(-8).reverse().map((d) => h("li", {}, decisionText(d)))));
    }) : [h("p", {}, "No rollouts.")]));
  }
  const service = h("select", { id: "rollout-service" }, known.map((s) => h("option", { value: s.name }, s.name)));
  const version = h("input", { id: "rollout-version", placeholder: "v2", required: true });
  const steps = h("input", { id: "rollout-steps", value: "5, 25, 50, 100" });
  const interval = h("input", { id: "rollout-interval", type: "number", min: 1, value: 600 });
  const start = async (event) => {
    event.preventDefault();
    try {
      await api("POST", `/api/v1/services/${encodeURIComponent(service.value)}/rollouts`, {
        to_version: version.value.trim(), interval_seconds: Number(interval.value),
        steps_percent: steps.value.split(",").map((s) => Number(s.trim())).filter((n) => n > 0) });
      say(`rollout of ${service.value} to ${version.value} started`);
      await render();
    } catch (err) { failed(err); }
  };
  view.replaceChildren(h("h1", {}, "Rollouts"),
    h("form", { class: "inline", id: "start-rollout", onsubmit: start },
      h("label", {}, "Service", service), h("label", {}, "To version", version),
      h("label", {}, "Steps (%)", steps), h("label", {}, "Seconds per step", interval),
      h("button", { type: "submit", class: "primary" }, "Start rollout")),
    container);
  await render();
  // Live: every change of the services' assignments, and a slow poll for analysis figures.
  watchServices(known.map((s) => s.name), () => render().catch(failed));
  every(3000, () => render().catch(() => {}));
}

async function experimentsView() {
  const known = await services();
  const service = h("select", { id: "experiment-service" }, known.map((s) => h("option", { value: s.name }, s.name)));
  const id = h("input", { id: "experiment-id", placeholder: "checkout-ab", required: true });
  const variants = h("input", { id: "experiment-variants", placeholder: "control=v1:50, new=v2:50" });
  const detail = h("div", { id: "experiment" });
  async function show() {
    try {
      const found = await api("GET", `/api/v1/services/${encodeURIComponent(service.value)}/experiments/${encodeURIComponent(id.value.trim())}`);
      detail.replaceChildren(
        table(["Variant", "Version", "Weight", "Tenants"], found.experiment.variants.map((v) =>
          h("tr", {}, h("td", {}, v.name), h("td", {}, v.version), h("td", {}, v.weight),
            h("td", {}, found.tenants_per_variant[v.name] ?? 0)))),
        h("button", { type: "button", class: "danger", onclick: async () => {
          try {
            await api("DELETE", `/api/v1/services/${encodeURIComponent(service.value)}/experiments/${encodeURIComponent(id.value.trim())}`);
            say("experiment stopped"); detail.replaceChildren();
          } catch (err) { failed(err); }
        } }, "Stop experiment"));
    } catch (err) { failed(err); }
  }
  const create = async (event) => {
    event.preventDefault();
    const parsed = variants.value.split(",").map((part) => part.trim()).filter(Boolean).map((part) => {
      const [name, rest] = part.split("=");
      const [version, weight] = (rest || "").split(":");
      return { name: name.trim(), version: (version || "").trim(), weight: Number(weight || 1) };
    });
    try {
      await api("POST", `/api/v1/services/${encodeURIComponent(service.value)}/experiments`, { id: id.value.trim(), variants: parsed });
      await show();
    } catch (err) { failed(err); }
  };
  view.replaceChildren(h("h1", {}, "Experiments"),
    h("form", { class: "inline", onsubmit: create },
      h("label", {}, "Service", service), h("label", {}, "Experiment id", id),
      h("label", {}, "Variants (name=version:weight, ...)", variants),
      h("button", { type: "button", onclick: () => show() }, "Show"),
      h("button", { type: "submit", class: "primary" }, "Create")),
    detail);
}

async function rollbackView() {
  const known = await services();
  const service = h("select", { id: "rollback-service" }, known.map((s) => h("option", { value: s.name }, s.name)));
  const from = h("input", { id: "rollback-from", placeholder: "the broken version", required: true });
  const to = h("input", { id: "rollback-to", placeholder: "the version to go back to", required: true });
  const tenants = h("input", { id: "rollback-tenants", placeholder: "all tenants, or ids separated by commas" });
  const result = h("div", { id: "rollback-result" });
  const overrides = h("div", { id: "overrides" });
  const request = () => ({
    service: service.value, from_version: from.value.trim(), to_version: to.value.trim(),
    tenant_ids: tenants.value.split(",").map((t) => t.trim()).filter(Boolean) });
  async function listOverrides() {
    const lists = await Promise.all(known.map(async (s) =>
      (await api("GET", `/api/v1/services/${encodeURIComponent(s.name)}/overrides`)).items.map((o) => ({ ...o, service: s.name }))));
    const all = lists.flat();
    overrides.replaceChildren(h("h2", {}, "Overrides in force"), all.length ? table(["Service", "Override", "Details", ""],
      all.map((o) => h("tr", {}, h("td", {}, o.service), h("td", {}, o.id), h("td", {}, h("pre", {}, JSON.stringify(o))),
        h("td", {}, h("button", { type: "button", onclick: async () => {
          try {
            await api("DELETE", `/api/v1/services/${encodeURIComponent(o.service)}/overrides/${encodeURIComponent(o.id)}`);
            await listOverrides();
          } catch (err) { failed(err); }
        } }, "Clear"))))) : h("p", {}, "None."));
  }
  const go = async (event) => {
    event.preventDefault();
    try {
      const dry = await api("POST", "/api/v1/rollback", { ...request(), dry_run: true });
      const reason = await confirmWithReason("Emergency rollback",
        `${dry.moved_tenants} tenant(s) of ${service.value} move from ${from.value} to ${to.value} at once. Go on?`);
      if (!reason) { say("rollback cancelled"); return; }
      const done = await api("POST", "/api/v1/rollback", { ...request(), reason });
      result.replaceChildren(h("p", { class: "good" }, `${done.moved_tenants} tenant(s) moved; override ${done.override_id}`));
      await listOverrides();
    } catch (err) { failed(err); }
  };
  view.replaceChildren(h("h1", {}, "Emergency rollback"),
    h("p", {}, "Moves tenants off a broken version in one step (an override above every pin, rollout and experiment). You see how many tenants move and say why before anything changes."),
    h("form", { class: "inline", id: "rollback-form", onsubmit: go },
      h("label", {}, "Service", service), h("label", {}, "From version", from),
      h("label", {}, "To version", to), h("label", {}, "Tenants", tenants),
      h("button", { type: "submit", class: "danger", id: "rollback-start" }, "Roll back…")),
    result, overrides);
  await listOverrides();
}

async function schemaView(upgradeId) {
  const known = await services();
  const service = h("select", { id: "schema-service" }, known.map((s) => h("option", { value: s.name }, s.name)));
  const version = h("input", { id: "schema-version", placeholder: "target version" });
  const tenants = h("input", { id: "schema-tenants", placeholder: "tenant ids (empty: by tier)" });
  const tier = h("input", { id: "schema-tier", placeholder: "tier" });
  const progress = h("div", { id: "schema-progress" });
  async function showProgress(id) {
    const upgrade = await api("GET", `/api/v1/schema/upgrades/${encodeURIComponent(id)}`);
    progress.replaceChildren(
      h("h2", {}, `Upgrade ${upgrade.upgrade_id}: ${upgrade.service} to schema ${upgrade.target_schema} `, h("span", { class: "tag" }, upgrade.state)),
      h("p", {}, `${upgrade.done} done, ${upgrade.failed} failed, of ${upgrade.total}`),
      table(["Tenant", "State", "From", "At", "Error"], upgrade.tenants.map((t) =>
        h("tr", {}, h("td", {}, t.tenant_id), h("td", { class: t.state === "failed" ? "bad" : "" }, t.state),
          h("td", {}, t.from), h("td", {}, t.current), h("td", {}, t.error || "")))));
    return upgrade.state === "finished";
  }
  const start = async (event) => {
    event.preventDefault();
    const ids = tenants.value.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      const started = await api("POST", "/api/v1/schema/upgrades", {
        service: service.value, target_version: version.value.trim(), tenant_ids: ids,
        cohort: tier.value.trim() ? { tiers: [tier.value.trim()] } : {} });
      location.hash = `#/schema/${encodeURIComponent(started.upgrade_id)}`;
    } catch (err) { failed(err); }
  };
  view.replaceChildren(h("h1", {}, "Schema upgrades"),
    h("form", { class: "inline", onsubmit: start },
      h("label", {}, "Service", service), h("label", {}, "Target version", version),
      h("label", {}, "Tenants", tenants), h("label", {}, "or tier", tier),
      h("button", { type: "submit", class: "primary" }, "Upgrade schemas")),
    progress);
  if (upgradeId) {
    if (!(await showProgress(upgradeId))) {
      if (token()) {
        // EventSource cannot send a bearer token: poll.
        let finished = false;
        every(1000, async () => {
          if (finished) return;
          try { finished = await showProgress(upgradeId); } catch (err) { failed(err); }
        });
      } else {
        const source = new EventSource(`/api/v1/schema/upgrades/${encodeURIComponent(upgradeId)}/events`);
        source.addEventListener("progress", () => showProgress(upgradeId).catch(failed));
        source.addEventListener("error", () => source.close());
        live.push(() => source.close());
      }
    }
  }
}

async function eventsView() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const tenant = h("input", { id: "events-tenant", value: params.get("tenant") || "", placeholder: "tenant" });
  const service = h("input", { id: "events-service", value: params.get("service") || "", placeholder: "service" });
  const events = [];
  // The newest events: start a little before the current revision.
  const head = (await api("GET", "/api/v1/tenants?page_size=1")).revision;
  let since = Math.max(0, head - 5000);
  for (let page = 0; page < 20; page++) {
    const query = new URLSearchParams({ since_revision: since, limit: 1000 });
    if (tenant.value) query.set("tenant_id", tenant.value);
    if (service.value) query.set("service", service.value);
    const listed = await api("GET", `/api/v1/events?${query}`);
    events.push(...listed.events);
    if (!listed.events.length || listed.next_revision <= since) break;
    since = listed.next_revision;
  }
  const filter = (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (tenant.value) query.set("tenant", tenant.value);
    if (service.value) query.set("service", service.value);
    location.hash = `#/events?${query}`;
  };
  view.replaceChildren(h("h1", {}, "Audit trail"),
    h("form", { class: "inline", onsubmit: filter },
      h("label", {}, "Tenant", tenant), h("label", {}, "Service", service),
      h("button", { type: "submit" }, "Filter")),
    table(["Revision", "When", "Who", "Why", "What", "Tenant", "Service"], events.slice(-500).reverse().map((e) =>
      h("tr", {}, h("td", {}, e.revision), h("td", {}, when(e.at_ms)), h("td", {}, e.actor), h("td", {}, e.reason),
        h("td", {}, e.kind), h("td", {}, e.tenant_id), h("td", {}, e.service))), { id: "events" }));
}

// ---------- routing ----------

const views = {
  tenants: (rest) => (rest.length ? tenantView(decodeURIComponent(rest[0])) : tenantsView()),
  services: () => servicesLive(),
  rollouts: () => rolloutsView(),
  experiments: () => experimentsView(),
  rollback: () => rollbackView(),
  schema: (rest) => schemaView(rest[0] ? decodeURIComponent(rest[0]) : null),
  events: () => eventsView(),
};

async function show() {
  for (const close of live) close();
  live = [];
  say("");
  const path = (location.hash.replace(/^#\/?/, "").split("?")[0] || "tenants").split("/");
  const [name, ...rest] = path;
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.view === name);
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
  }
  const render = views[name] || views.tenants;
  view.replaceChildren(h("p", {}, "Loading…"));
  try {
    await render(rest);
    view.dataset.ready = name;
  } catch (err) {
    view.replaceChildren(h("h1", {}, "Cannot show this view"), h("p", { class: "bad" }, err.message));
    failed(err);
  }
}

function openTokenDialog() {
  const dialog = document.getElementById("token-dialog");
  if (dialog.open) return;
  document.getElementById("token-input").value = token();
  document.getElementById("actor-input").value = actorName();
  dialog.showModal();
}

document.getElementById("token-button").addEventListener("click", openTokenDialog);
document.getElementById("token-dialog").addEventListener("close", (event) => {
  const dialog = event.target;
  if (dialog.returnValue === "save") {
    localStorage.setItem("greyrouter.token", document.getElementById("token-input").value.trim());
    localStorage.setItem("greyrouter.actor", document.getElementById("actor-input").value.trim());
  } else if (dialog.returnValue === "clear") {
    localStorage.removeItem("greyrouter.token");
    localStorage.removeItem("greyrouter.actor");
  }
  show();
});
window.addEventListener("hashchange", show);
show();
