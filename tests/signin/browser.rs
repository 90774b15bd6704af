//! A browser as the sign-in tests play it: its cookies, and the `Origin` and
//! `Sec-Fetch-Site` it sends with a form.
#![allow(dead_code)]

use std::collections::HashMap;

use reqwest::header;

/// `form` as a browser sends it.
pub fn urlencoded(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    form.iter().map(|(n, v)| format!("{}={}", enc(n), enc(v))).collect::<Vec<_>>().join("&")
}

/// A browser: its cookies, and the `Origin` and `Sec-Fetch-Site` it sends.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(base: String) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base, http, cookies: HashMap::new() }
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn get(&mut self, url: &str) -> (u16, String) {
        let url = if url.starts_with("http") { url.to_owned() } else { format!("{}{url}", self.base) };
        let response = self.http.get(url).header(header::COOKIE, self.cookie_header()).send().await.unwrap();
        self.keep_cookies(&response);
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// A form POST from one of the relay's own pages.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let origin = self.base.clone();
        self.post_from(path, form, &origin, "same-origin").await
    }

    pub async fn post_from(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: &str,
        site: &str,
    ) -> reqwest::Response {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::ORIGIN, origin)
            .header("sec-fetch-site", site)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(urlencoded(form))
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }
}
