"""The dashboard: every page a person reads or edits (views, the audience editor, charts,
template tags and the page context). The engines live in `audiences` and `syncs`; this app
only reads them through their selectors and writes through their services."""
