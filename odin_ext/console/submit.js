// The submission form, generated from the JSON Schema of the chosen kind's arguments
// (GET /v1/kinds). Odin validates the submission. Its 422 response lists invalid fields as
// "args.steps", "priority" and so on, and each message appears next to its field.
//
// Inputs become JSON values as follows. Integer and number fields send a number when the
// text is one and the text itself otherwise, so the server's message explains the mistake.
// Booleans are checkboxes, string fields send their text, and enums are menus. Any other
// schema (objects, arrays, unions, untyped) is a JSON text area. An empty field is left out
// of the submission, so the kind's default applies.

import { ApiError, request } from "./api.js";
import { fill, formatJson, h, message } from "./dom.js";
import { replaceRoute, routeHash } from "./route.js";

const NUMBER_PATTERN = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

export function mount(container, kindName) {
  let mounted = true;
  document.title = "Submit a job · Odin";
  fill(container, h("h1", {}, "Submit a job"), message("empty", "Loading job kinds…"));
  loadKinds();

  async function loadKinds() {
    let kinds;
    try {
      kinds = (await request("v1/kinds")).kinds;
    } catch (error) {
      if (mounted) {
        fill(container, h("h1", {}, "Submit a job"), message("error", `Could not load job kinds: ${error.message}`));
      }
      return;
    }
    if (mounted) {
      renderForm(container, kinds, kindName);
    }
  }

  return () => {
    mounted = false;
  };
}

function renderForm(container, kinds, kindName) {
  const kind = kinds.find((candidate) => candidate.name === kindName) || kinds[0];
  if (kind === undefined) {
    fill(container, h("h1", {}, "Submit a job"), message("empty", "This Odin has no job kinds registered."));
    return;
  }
  if (kind.name !== kindName) {
    replaceRoute(routeHash(["submit", kind.name]));
  }

  const kindSelect = h("select", { id: "submit-kind", name: "kind" },
    kinds.map((candidate) => h("option", { value: candidate.name, selected: candidate.name === kind.name }, candidate.name)));
  kindSelect.addEventListener("change", () => {
    location.hash = routeHash(["submit", kindSelect.value]);
  });

  const argFields = argumentFields(kind.args_schema);
  const optionFields = submissionOptions(kind);
  const formProblem = h("div", { id: "submit-problem", "aria-live": "assertive" });
  const submitButton = h("button", { type: "submit", class: "button primary", id: "submit-button" }, "Submit job");

  const form = h("form", { id: "submit-form", class: "submit-form", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "submit-kind", class: "label" }, "Kind"), kindSelect,
      kind.description ? h("p", { class: "help" }, withCode(kind.description)) : null),
    h("fieldset", { class: "arguments" }, h("legend", {}, "Arguments"),
      argFields.length ? argFields.map((entry) => entry.element) : h("p", { class: "help" }, "This kind takes no arguments.")),
    h("details", { class: "options" }, h("summary", {}, "Options"), optionFields.map((entry) => entry.element)),
    formProblem,
    h("div", { class: "form-actions" }, submitButton));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblems(form, formProblem);
    const { body, problems } = collect(kind.name, argFields, optionFields);
    if (problems.length > 0) {
      showProblems(form, formProblem, "Some fields are not valid JSON.", problems);
      return;
    }
    submitButton.disabled = true;
    try {
      const job = await request("v1/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      submitButton.disabled = false;
      if (error instanceof ApiError && error.errors.length > 0) {
        showProblems(form, formProblem, error.message, error.errors);
      } else {
        showProblems(form, formProblem, `The job was not submitted: ${error.message}`, []);
      }
    }
  });

  fill(container, h("h1", {}, "Submit a job"), form);
}

/** Splits docstring text into text and <code> nodes at ``double backquotes`` (reStructuredText). */
function withCode(text) {
  return text.split(/``([^`]+)``/).map((part, index) => (index % 2 === 1 ? h("code", {}, part) : part));
}

/** Builds the fields of the submission options besides args, named as the API names them. */
function submissionOptions(kind) {
  const maxAttempts = kind.max_attempts ? `the kind's ${kind.max_attempts}` : "the server's default";
  const timeout = kind.timeout_seconds ? `the kind's ${kind.timeout_seconds} s` : "no timeout";
  return [
    field("queue", "Queue", { type: "string" }, `Empty means the kind's queue, ${kind.queue}.`, false),
    field("priority", "Priority", { type: "integer" }, "From -100 to 100; higher runs first. Empty means 0.", false),
    field("delay_seconds", "Delay in seconds", { type: "number" }, "The job waits this long before it may run.", false),
    field("max_attempts", "Max attempts", { type: "integer" }, `Empty means ${maxAttempts}.`, false),
    field("timeout_seconds", "Timeout in seconds", { type: "number" }, `Per attempt. Empty means ${timeout}.`, false),
  ];
}

/** Builds one field per property of an args schema, required ones first. */
function argumentFields(schema) {
  const properties = schema && schema.properties ? schema.properties : {};
  const required = new Set(schema && Array.isArray(schema.required) ? schema.required : []);
  const names = Object.keys(properties).sort((a, b) => Number(required.has(b)) - Number(required.has(a)));
  return names.map((name) => {
    const property = properties[name];
    const initial = "default" in property ? property.default : undefined;
    return field(`args.${name}`, property.title || name, property, property.description, required.has(name), initial);
  });
}

/**
 * Builds a labelled input for one value. `problemField` is the field name that the
 * server's problem document uses for it, such as "args.steps".
 */
function field(problemField, labelText, schema, help, required, initial) {
  const control = inputFor(schema, initial);
  const id = `field-${problemField.replace(/[^A-Za-z0-9_-]/g, "-")}`;
  control.element.id = id;
  control.element.name = problemField;
  const element = h("div", { class: "field", "data-field": problemField },
    h("label", { for: id, class: "label" }, labelText, required ? h("span", { class: "required", title: "required" }, " *") : null),
    control.element,
    help ? h("p", { class: "help" }, help) : null,
    h("p", { class: "field-error", hidden: true, role: "alert" }));
  return { name: problemField, element, read: control.read };
}

/** Returns the input element for a schema and a function reading its JSON value. */
function inputFor(schema, initial) {
  const type = effectiveType(schema);
  if (Array.isArray(schema.enum) && schema.enum.every((value) => typeof value === "string")) {
    const select = h("select", {},
      h("option", { value: "" }, "(default)"),
      schema.enum.map((value) => h("option", { value, selected: value === initial }, value)));
    return { element: select, read: () => (select.value === "" ? undefined : select.value) };
  }
  switch (type) {
    case "boolean": {
      const checkbox = h("input", { type: "checkbox", checked: initial === true });
      return { element: checkbox, read: () => checkbox.checked };
    }
    case "integer":
    case "number": {
      const input = h("input", { type: "text", inputmode: type === "integer" ? "numeric" : "decimal",
        value: typeof initial === "number" ? String(initial) : "", autocomplete: "off" });
      return { element: input, read: () => readNumber(input.value) };
    }
    case "string": {
      const input = h("input", { type: "text", value: typeof initial === "string" ? initial : "", autocomplete: "off" });
      return { element: input, read: () => (input.value === "" ? undefined : input.value) };
    }
    default: {
      const text = initial === undefined || initial === null ? "" : formatJson(initial);
      const area = h("textarea", { rows: "3", spellcheck: "false", placeholder: 'JSON, for example "text", 42 or {"a": 1}' }, text);
      return { element: area, read: () => readJson(area.value) };
    }
  }
}

/** Returns the one JSON type a schema accepts, ignoring null, or undefined when there are several. */
function effectiveType(schema) {
  if (typeof schema.type === "string") {
    return schema.type;
  }
  if (Array.isArray(schema.anyOf)) {
    const types = schema.anyOf.filter((option) => option.type !== "null");
    if (types.length === 1 && types[0].type !== undefined && !types[0].enum) {
      return types[0].type;
    }
  }
  return undefined;
}

function readNumber(text) {
  const trimmed = text.trim();
  if (trimmed === "") {
    return undefined;
  }
  return NUMBER_PATTERN.test(trimmed) ? Number(trimmed) : trimmed;
}

function readJson(text) {
  if (text.trim() === "") {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`not valid JSON: ${error.message}`);
  }
}

/** Builds the request body; problems lists fields whose text could not be read. */
function collect(kindName, argFields, optionFields) {
  const body = { kind: kindName, args: {} };
  const problems = [];
  for (const [target, fields] of [[body.args, argFields], [body, optionFields]]) {
    for (const entry of fields) {
      try {
        const value = entry.read();
        if (value !== undefined) {
          target[entry.name.replace(/^args\./, "")] = value;
        }
      } catch (error) {
        problems.push({ field: entry.name, message: error.message });
      }
    }
  }
  return { body, problems };
}

function clearProblems(form, formProblem) {
  fill(formProblem);
  for (const element of form.querySelectorAll(".field-error")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const element of form.querySelectorAll("[aria-invalid]")) {
    element.removeAttribute("aria-invalid");
  }
}

/**
 * Shows each problem next to its field. A name such as "args.items.0" goes to the closest
 * field ("args.items"), and problems without a field are listed above the button.
 */
function showProblems(form, formProblem, summary, problems) {
  const unplaced = [];
  for (const problem of problems) {
    const container = closestField(form, String(problem.field || ""));
    if (container === null) {
      unplaced.push(problem);
      continue;
    }
    const error = container.querySelector(".field-error");
    error.textContent = error.textContent ? `${error.textContent} ${problem.message}` : problem.message;
    error.hidden = false;
    container.querySelector("input, select, textarea").setAttribute("aria-invalid", "true");
  }
  if (problems.length > 0 && unplaced.length < problems.length) {
    form.querySelector(".options").open ||= Boolean(form.querySelector(".options [aria-invalid]"));
    form.querySelector("[aria-invalid]").focus();
  }
  fill(formProblem, message("error", summary),
    unplaced.length ? h("ul", { class: "problems" }, unplaced.map((problem) =>
      h("li", {}, problem.field ? `${problem.field}: ${problem.message}` : problem.message))) : null);
}

function closestField(form, name) {
  const parts = name.split(".");
  while (parts.length > 0) {
    const candidate = parts.join(".");
    const container = [...form.querySelectorAll("[data-field]")].find((element) => element.dataset.field === candidate);
    if (container !== undefined) {
      return container;
    }
    parts.pop();
  }
  return null;
}
