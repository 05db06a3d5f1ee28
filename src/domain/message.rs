//! Composing one lawful message: template + recipient variables + the ad frame, sized in EUC-KR.
//!
//! The same [`Composer`] serves `campaign run`, `template preview` and the check that
//! `campaign create` runs over a whole segment, so what is previewed is what is sent.

use serde_json::{Map, Value};

use crate::domain::compliance;
use crate::domain::sizing::{self, MessageType};
use crate::domain::template::{Renderer, TemplateSource};

/// The final text of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub text: String,
    /// Sent only with LMS.
    pub subject: Option<String>,
    pub kind: MessageType,
    pub bytes: usize,
}

/// Why a message cannot be sent (a permanent failure of that message only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ComposeError {
    /// Stable reason code: template_error, empty_text, too_long, unencodable_char, subject_too_long,
    /// missing_ad_header, ...
    pub code: String,
    pub message: String,
}

/// The ad frame: who the sender is and how to opt out.
#[derive(Debug, Clone)]
pub struct AdFrame {
    pub brand: String,
    /// The 080 number as printed, e.g. `080-600-5653`.
    pub optout_display: String,
}

pub struct Composer {
    renderer: Renderer,
    ad: Option<AdFrame>,
    columns: Vec<String>,
}

impl Composer {
    /// `ad`: `Some` for advertising campaigns (header and footer added), `None` for `--no-ad`.
    pub fn new(
        src: &TemplateSource,
        ad: Option<AdFrame>,
    ) -> Result<Composer, crate::domain::template::TemplateError> {
        Ok(Composer {
            renderer: Renderer::new(src)?,
            ad,
            columns: Vec::new(),
        })
    }

    /// The segment's columns, named in "undefined variable" errors.
    pub fn with_columns(mut self, columns: Vec<String>) -> Composer {
        self.columns = columns;
        self
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Composes from the stored JSON text of a recipient's variables.
    pub fn compose_json(&self, vars: &str) -> Result<Composed, ComposeError> {
        let vars: Map<String, Value> = serde_json::from_str(vars).map_err(|e| ComposeError {
            code: "invalid_vars".into(),
            message: format!("stored recipient variables are not a JSON object: {e}"),
        })?;
        self.compose(&vars)
    }

    pub fn compose(&self, vars: &Map<String, Value>) -> Result<Composed, ComposeError> {
        let rendered = self.renderer.render(vars).map_err(|e| {
            let e = if self.columns.is_empty() {
                e
            } else {
                e.with_columns(&self.columns)
            };
            ComposeError {
                code: e.code().into(),
                message: e.to_string(),
            }
        })?;
        if rendered.body.trim().is_empty() {
            return Err(ComposeError {
                code: "empty_text".into(),
                message: format!(
                    "the template '{}' renders an empty message for this recipient; \
                     give it a body (check its {{% if %}} blocks and the recipient's values)",
                    self.renderer.name()
                ),
            });
        }
        let text = match &self.ad {
            Some(ad) => {
                // A marker can also arrive through a recipient's data, not only the template.
                if let Some(m) = compliance::find_ad_marker(&rendered.body) {
                    return Err(ComposeError {
                        code: "ad_marker_in_text".into(),
                        message: format!("the rendered text (from the recipient's data): {m}"),
                    });
                }
                let t = compliance::frame_ad(&rendered.body, &ad.brand, &ad.optout_display);
                compliance::check_rendered_ad(&t, &ad.brand, &ad.optout_display).map_err(|e| {
                    ComposeError {
                        code: e.code().into(),
                        message: e.to_string(),
                    }
                })?;
                t
            }
            None => compliance::trim_blank_lines(&rendered.body).to_string(),
        };
        let sized =
            sizing::classify(&text, rendered.subject.as_deref()).map_err(|e| ComposeError {
                code: e.code().into(),
                message: e.to_string(),
            })?;
        let subject = match sized.kind {
            MessageType::Lms => rendered.subject.filter(|s| !s.trim().is_empty()),
            MessageType::Sms => None,
        };
        Ok(Composed {
            text,
            subject,
            kind: sized.kind,
            bytes: sized.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn composer(text: &str, ad: bool) -> Composer {
        let src = TemplateSource::parse("t", text).unwrap();
        let ad = ad.then(|| AdFrame {
            brand: "토스페이먼츠".into(),
            optout_display: "080-600-5653".into(),
        });
        Composer::new(&src, ad).unwrap()
    }

    fn vars(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn ads_are_framed_and_sized_with_the_frame() {
        let c = composer("\n\n{{ name }}님 봄 세일\n", true);
        let m = c.compose(&vars(json!({"name": "김민수"}))).unwrap();
        assert_eq!(
            m.text,
            "(광고) 토스페이먼츠\n김민수님 봄 세일\n무료수신거부 080-600-5653"
        );
        // 20 + 16 + 26 bytes in EUC-KR.
        assert_eq!((m.kind, m.bytes), (MessageType::Sms, 62));
        assert_eq!(m.subject, None);
    }

    #[test]
    fn informational_text_is_the_body_without_surrounding_blank_lines() {
        let c = composer("\n \n{{ name }}님, 안내드립니다.\n\n끝  \n\n", false);
        let m = c.compose(&vars(json!({"name": "김"}))).unwrap();
        assert_eq!(m.text, "김님, 안내드립니다.\n\n끝");
        assert_eq!(m.bytes, sizing::euckr_len(&m.text).unwrap());
    }

    #[test]
    fn subject_goes_with_lms_only_and_an_empty_one_not_at_all() {
        let c = composer("---\nsubject: \"{{ s }}\"\n---\n{{ body }}", true);
        let long = "가".repeat(30);
        let m = c
            .compose(&vars(json!({"s": "소식", "body": long})))
            .unwrap();
        assert_eq!(
            (m.kind, m.subject.as_deref()),
            (MessageType::Lms, Some("소식"))
        );
        let m = c.compose(&vars(json!({"s": "", "body": long}))).unwrap();
        assert_eq!((m.kind, m.subject), (MessageType::Lms, None));
        let m = c
            .compose(&vars(json!({"s": "소식", "body": "짧게"})))
            .unwrap();
        assert_eq!((m.kind, m.subject), (MessageType::Sms, None));
    }

    #[test]
    fn refusals_carry_a_stable_code() {
        let c = composer("{{ body }}", true);
        let code = |body: &str| c.compose(&vars(json!({"body": body}))).unwrap_err().code;
        assert_eq!(code("10,000₩"), "unencodable_char");
        assert_eq!(code(&"가".repeat(978)), "too_long"); // 1956 + 46 bytes
        assert_eq!(code("  \n "), "empty_text");
        let c = composer("{% if vip %}VIP 혜택{% endif %}", false);
        let e = c.compose(&vars(json!({"vip": false}))).unwrap_err();
        assert_eq!(e.code, "empty_text");
        assert!(e.message.contains("'t'"), "{e}");
        let e = c.compose(&vars(json!({}))).unwrap_err();
        assert_eq!(e.code, "template_error");
        let e = c.compose_json("[1]").unwrap_err();
        assert_eq!(e.code, "invalid_vars");
    }

    #[test]
    fn an_ad_marker_arriving_through_recipient_data_is_refused() {
        let src = TemplateSource::parse("t", "{{ name }}님 안녕하세요").expect("template");
        let c = Composer::new(
            &src,
            Some(AdFrame {
                brand: "munja".into(),
                optout_display: "080-600-5653".into(),
            }),
        )
        .expect("composer");
        let e = c
            .compose_json(r#"{"name": "[광고] 김"}"#)
            .expect_err("marker in data");
        assert_eq!(e.code, "ad_marker_in_text");
        assert!(c.compose_json(r#"{"name": "김민수"}"#).is_ok());
    }
}
