//! Composing one lawful message: template + recipient variables + the ad frame, sized in EUC-KR.
//!
//! The same [`Composer`] serves `campaign run`, `template preview` and the check that
//! `campaign create` runs over a whole segment, so what is previewed is what is sent.

use serde_json::{Map, Value};

use crate::compliance;
use crate::sizing::{self, MessageType};
use crate::template::{Renderer, TemplateSource};

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
    /// Stable reason code: template_error, too_long, unencodable_char, subject_too_long, missing_ad_header, ...
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
    ) -> Result<Composer, crate::template::TemplateError> {
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
        let text = match &self.ad {
            Some(ad) => {
                let t = compliance::frame_ad(&rendered.body, &ad.brand, &ad.optout_display);
                compliance::check_rendered_ad(&t, &ad.brand, &ad.optout_display).map_err(|e| {
                    ComposeError {
                        code: e.code().into(),
                        message: e.to_string(),
                    }
                })?;
                t
            }
            None => rendered.body,
        };
        let sized =
            sizing::classify(&text, rendered.subject.as_deref()).map_err(|e| ComposeError {
                code: e.code().into(),
                message: e.to_string(),
            })?;
        let subject = match sized.kind {
            MessageType::Lms => rendered.subject,
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
