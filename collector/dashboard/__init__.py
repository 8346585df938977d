"""The collector's dashboard: server-rendered HTML behind a token kept in an HttpOnly cookie.

- :mod:`.views`: the page logic, pure (the fleet matrix, a target's state transitions, a
  finding's hop path), with no I/O, tested on its own;
- :mod:`.queries`: what the pages read, through SQLAlchemy with bound parameters only;
- :mod:`.routes`: login and logout, the pages, the security headers; Jinja2 templates in
  ``templates/`` (autoescaped: everything in a finding comes from an agent) and a hand-written
  stylesheet in ``static/``. No script at all; nothing is loaded from anywhere else.
"""
