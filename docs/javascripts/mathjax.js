// MathJax 3 settings for pymdownx.arithmatex (generic mode: \( \) and \[ \] in the Markdown pages) and for
// the notebooks' markdown cells ($...$ and $$...$$). The whole page is searched; code, pre and the
// other tags in skipHtmlTags are not, so shell variables like $TFDS_DATA_DIR in code stay as they are.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: { ignoreHtmlClass: "tex2jax_ignore|mathjax_ignore", processHtmlClass: "arithmatex|jp-RenderedMarkdown" }
};
