"""The user at a browser, for the interop suite's OAuth 2.0 server: real HTTPS
with a cookie jar, redirects followed, and each page's form submitted the way
a browser submits it (hidden fields kept, the clicked button's name=value
sent, `form=` buttons outside their form honoured). It signs in on
oidc-provider's interaction pages, consents, confirms device codes and, for
the authorization code flow, follows the last redirect to the loopback
redirect URI (where `mailbridge auth` listens).
"""

import http.cookiejar
import ssl
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser


class Form:
    def __init__(self, attrs):
        self.id = attrs.get("id")
        self.action = attrs.get("action", "")
        self.method = (attrs.get("method") or "get").lower()
        self.fields = []  # (name, value) of inputs, in document order
        self.buttons = []  # dicts: name, value, text, autofocus


class PageParser(HTMLParser):
    """Forms, their inputs and submit buttons, and the page title."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms, self.links, self.title = [], [], ""
        self._form = None
        self._link = None
        self._button = None
        self._in_title = False
        self._loose_buttons = []  # (form id, button) declared outside their form

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = Form(a)
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            kind = a.get("type", "text").lower()
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            if kind in ("submit", "image"):
                self._form.buttons.append({"name": a["name"], "value": a.get("value", ""), "text": a.get("value", ""),
                                           "autofocus": "autofocus" in a})
                return
            self._form.fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and a.get("type", "submit").lower() == "submit":
            self._button = {"name": a.get("name"), "value": a.get("value", ""), "text": "",
                            "autofocus": "autofocus" in a, "form": a.get("form")}
        elif tag == "a" and a.get("href"):
            self._link = [a["href"], ""]
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "button" and self._button is not None:
            b, self._button = self._button, None
            b["text"] = b["text"].strip()
            owner = b.pop("form")
            if owner:
                self._loose_buttons.append((owner, b))
            elif self._form is not None:
                self._form.buttons.append(b)
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], self._link[1].strip()))
            self._link = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._button is not None:
            self._button["text"] += data
        if self._link is not None:
            self._link[1] += data
        if self._in_title:
            self.title += data

    def close(self):
        super().close()
        for owner, b in self._loose_buttons:
            for f in self.forms:
                if f.id == owner:
                    f.buttons.append(b)


class LoopbackRedirect(Exception):
    """Raised instead of following a redirect to the loopback redirect URI."""

    def __init__(self, url):
        super().__init__(url)
        self.url = url


class Page:
    def __init__(self, url, status, body):
        self.url, self.status, self.body = url, status, body
        p = PageParser()
        p.feed(body)
        p.close()
        self.forms, self.links, self.title = p.forms, p.links, p.title.strip()

    def __repr__(self):
        return f"<Page {self.status} {self.url} {self.title!r}>"


class Browser:
    """A cookie jar and an HTTPS opener that trusts the test CA."""

    def __init__(self, ca_file, stop_at=None):
        self.jar = http.cookiejar.CookieJar()
        ctx = ssl.create_default_context(cafile=str(ca_file))
        self.stop_at = stop_at
        self.visited = []
        browser = self

        class Redirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                browser.visited.append(newurl)
                if browser.stop_at and newurl.startswith(browser.stop_at):
                    raise LoopbackRedirect(newurl)
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  urllib.request.HTTPSHandler(context=ctx), Redirects())

    def open(self, url, data=None):
        self.visited.append(url)
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(url, data=body, headers={"User-Agent": "interop-browser/1"})
        try:
            with self.opener.open(req, timeout=15) as r:
                return Page(r.geturl(), r.status, r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            return Page(e.geturl(), e.code, e.read().decode("utf-8", "replace"))

    def submit(self, page, fill=None, click=None):
        """Submits the page's only (or first) form: fields from the page, overridden by `fill`
        for the names present; the button whose text or name is `click`, else the autofocus one,
        else the first that is not an abort."""
        assert page.forms, f"no form on {page!r}:\n{page.body[:2000]}"
        form = page.forms[0]
        fields = [(n, (fill or {}).get(n, v)) for n, v in form.fields]
        button = None
        if click is not None:
            matches = [b for b in form.buttons if click in (b["text"], b["name"])]
            assert matches, f"no button {click!r} on {page!r}: {form.buttons}"
            button = matches[0]
        elif form.buttons:
            button = next((b for b in form.buttons if b["autofocus"]), None) or next(
                (b for b in form.buttons if b["name"] != "abort"), None)
        if button and button["name"]:
            fields.append((button["name"], button["value"]))
        action = urllib.parse.urljoin(page.url, form.action or page.url)
        if form.method == "post":
            return self.open(action, fields)
        return self.open(action + ("&" if "?" in action else "?") + urllib.parse.urlencode(fields))

    def sign_in_and_consent(self, page, login, password="any", deny=False, max_steps=8):
        """Answers interaction pages (login, consent, device confirmation) until none is left.
        With deny=True the user signs in, then clicks the page's abort button or cancel link."""
        for _ in range(max_steps):
            names = {n for f in page.forms for n, _ in f.fields}
            if not page.forms:
                return page
            if "login" in names:
                page = self.submit(page, fill={"login": login, "password": password})
                continue
            if deny:
                if any(b["name"] == "abort" for f in page.forms for b in f.buttons):
                    return self.submit(page, click="abort")
                cancel = [href for href, text in page.links if "abort" in href or "Cancel" in text]
                if cancel:
                    return self.open(urllib.parse.urljoin(page.url, cancel[0]))
            page = self.submit(page)
        raise AssertionError(f"still on a form after {max_steps} steps: {page!r}")


def approve_device(ca_file, verification_uri, user_code, login, deny=False):
    """A user opening the verification URL, typing the user code, signing in and approving
    (or aborting, with deny=True). Returns the last page (oidc-provider's success/abort page)."""
    b = Browser(ca_file)
    page = b.open(verification_uri)
    assert page.status == 200, page
    page = b.submit(page, fill={"user_code": user_code})
    page = b.sign_in_and_consent(page, login, deny=deny)
    assert page.status == 200, f"{page!r}:\n{page.body[:2000]}"
    return page


def drive_code_flow(ca_file, authorize_url, login, follow=True, deny=False):
    """A user opening the authorization URL, signing in and consenting. Returns the loopback
    redirect URL (with code and state, or the error) as the browser's address bar shows it;
    with follow=True the browser also loads it, as a real one would, and the result is
    (url, Page) from whatever listens there."""
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize_url).query)
    redirect_uri = q["redirect_uri"][0]
    b = Browser(ca_file, stop_at=redirect_uri)
    try:
        page = b.open(authorize_url)
        page = b.sign_in_and_consent(page, login, deny=deny)
    except LoopbackRedirect as r:
        if not follow:
            return r.url
        b.stop_at = None
        return r.url, b.open(r.url)
    raise AssertionError(f"no redirect to {redirect_uri}; ended on {page!r}:\n{page.body[:2000]}")
