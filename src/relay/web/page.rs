//! Building the HTML of a page: a shell with the stylesheet, and escaped text
//! in it. Anything from a user or a machine goes through [`esc`].

use axum::response::Html;

/// `text` made safe inside HTML text and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page being built.
#[derive(Debug, Clone)]
pub struct Page {
    title: String,
    head: String,
    body: String,
}

impl Page {
    /// An empty page titled `title`.
    pub fn new(title: &str) -> Self {
        Self { title: title.to_owned(), head: String::new(), body: String::new() }
    }

    /// A paragraph of plain text.
    pub fn para(mut self, text: &str) -> Self {
        self.body.push_str(&format!("<p>{}</p>\n", esc(text)));
        self
    }

    /// Markup built by the caller, with everything variable in it escaped.
    pub fn raw(mut self, html: &str) -> Self {
        self.body.push_str(html);
        self.body.push('\n');
        self
    }

    /// Makes the browser go on to `url` as soon as the page shows (a page
    /// that continues, where a 302 after a form would be stopped by the
    /// `form-action` policy).
    pub fn continue_to(mut self, url: &str) -> Self {
        self.head.push_str(&format!("<meta http-equiv=\"refresh\" content=\"0;url={}\">\n", esc(url)));
        self
    }

    /// A form that POSTs `fields` (hidden, escaped) to `action`, with one button.
    pub fn button(self, action: &str, fields: &[(&str, &str)], label: &str, class: &str) -> Self {
        let html = form(action, fields, label, class);
        self.raw(&html)
    }

    /// The whole document.
    pub fn html(&self) -> Html<String> {
        Html(format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title} · aic</title>\n<link rel=\"stylesheet\" href=\"/static/aic.css\">\n{head}</head>\n\
             <body>\n<header><a class=\"brand\" href=\"/dashboard\">aic</a></header>\n<main>\n<h1>{title}</h1>\n\
             {body}</main>\n</body>\n</html>\n",
            title = esc(&self.title),
            head = self.head,
            body = self.body,
        ))
    }
}

/// A POST form with hidden `fields` and one button.
pub fn form(action: &str, fields: &[(&str, &str)], label: &str, class: &str) -> String {
    let hidden: String = fields
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value)))
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{hidden}<button type=\"submit\" class=\"{}\">{}</button></form>",
        esc(action),
        esc(class),
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        let html = Page::new("<t>").para("<script>").html().0;
        assert!(html.contains("&lt;t&gt;") && html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
