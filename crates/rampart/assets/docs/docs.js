// Rampart's API documentation page: Swagger UI (swagger-ui-dist 5.35.0, Apache-2.0,
// see /docs/LICENSE) on this gateway's own /openapi.json. Loaded as a file, not inline,
// so that the page's Content-Security-Policy needs no 'unsafe-inline'.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No call to the public validator: the page talks to this gateway only.
    validatorUrl: null,
  });
});
