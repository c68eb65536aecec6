//! The stand-in model: a deterministic function of the request, so a test
//! can tell from the answer whether every part of its request arrived.

/// A request, as any of the wire formats carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    /// The system prompt, all parts joined by a space.
    pub system: String,
    /// The text of the last user turn.
    pub last_user: String,
    /// When the conversation ends with a tool's result: `(tool name, result text)`.
    pub tool_result: Option<(String, String)>,
    /// Image references of the last user turn (URL, or `data:` media type).
    pub images: Vec<String>,
    /// Offered tool names.
    pub tools: Vec<String>,
    /// The tool a call is required of (`Some("")`: any tool).
    pub forced_tool: Option<String>,
    /// JSON output asked for.
    pub json: bool,
    /// Output cap.
    pub max_tokens: Option<usize>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Words across the whole prompt (the stand-in's token count).
    pub prompt_words: usize,
    /// The text of a final assistant turn: a prefix the answer continues.
    pub prefix: Option<String>,
}

/// The stand-in's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Text, split into the pieces a stream sends.
    pub pieces: Vec<String>,
    /// A tool call: `(name, arguments as a JSON object)`.
    pub tool_call: Option<(String, serde_json::Value)>,
    /// `stop`, `length` or `tool_calls`.
    pub finish: &'static str,
    /// Prompt tokens.
    pub input_tokens: usize,
    /// Output tokens.
    pub output_tokens: usize,
}

impl Answer {
    /// The whole text.
    #[must_use]
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// The deterministic answer to `ask`:
/// - a required tool call (or, under `auto`, a tool the user names) →
///   a call with `{"input": <last user text>}`;
/// - after a tool result → `tool <name> said: <result>`;
/// - JSON asked for → `{"echo": <last user text>}`;
/// - otherwise `echo: <last user text>`, then ` [system: …]` and
///   ` [images: …]` when present;
/// - cut at the first stop sequence, then at `max_tokens` words (`length`);
/// - after a final assistant turn that begins that text (a prefix to
///   continue), only the rest of it.
#[must_use]
pub fn brain(ask: &Ask) -> Answer {
    let tool = match &ask.forced_tool {
        Some(name) if name.is_empty() => ask.tools.first().cloned(),
        Some(name) => Some(name.clone()),
        None if ask.tool_result.is_none() => ask.tools.iter().find(|t| ask.last_user.contains(t.as_str())).cloned(),
        None => None,
    };
    if let Some(name) = tool {
        return Answer {
            pieces: Vec::new(),
            tool_call: Some((name, serde_json::json!({ "input": ask.last_user }))),
            finish: "tool_calls",
            input_tokens: ask.prompt_words,
            output_tokens: 1 + words(&ask.last_user),
        };
    }
    let mut text = if let Some((name, result)) = &ask.tool_result {
        format!("tool {name} said: {result}")
    } else if ask.json {
        serde_json::json!({ "echo": ask.last_user }).to_string()
    } else {
        let mut t = format!("echo: {}", ask.last_user);
        if !ask.system.is_empty() {
            t.push_str(&format!(" [system: {}]", ask.system));
        }
        if !ask.images.is_empty() {
            t.push_str(&format!(" [images: {}]", ask.images.join(", ")));
        }
        t
    };
    if let Some(at) = ask.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(at);
    }
    if let Some(rest) = ask.prefix.as_deref().and_then(|p| text.strip_prefix(p)) {
        text = rest.to_owned();
    }
    let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    let mut finish = "stop";
    if let Some(max) = ask.max_tokens
        && pieces.len() > max
    {
        pieces.truncate(max);
        finish = "length";
    }
    let output_tokens = pieces.len();
    Answer { pieces, tool_call: None, finish, input_tokens: ask.prompt_words, output_tokens }
}

/// Whitespace-separated words.
#[must_use]
pub(crate) fn words(s: &str) -> usize {
    s.split_whitespace().count()
}
