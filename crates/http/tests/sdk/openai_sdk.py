"""The official OpenAI Python SDK against a running ModelRoute server,
unmodified: only base_url and api_key change. Run by .ci/run:

    MR_BASE_URL=http://127.0.0.1:PORT/v1 MR_KEY=mr_... python openai_sdk.py
"""

import json
import os

import openai
from openai import OpenAI
from checks import check, report

client = OpenAI(base_url=os.environ["MR_BASE_URL"], api_key=os.environ["MR_KEY"], max_retries=0)


messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello SDK"}]

models = [m.id for m in client.models.list().data]
check("models.list", "builtin/echo" in models, models)
check("models.retrieve", client.models.retrieve("builtin/echo").id == "builtin/echo")

r = client.chat.completions.create(model="builtin/echo", messages=messages)
check("completion text", r.choices[0].message.content == "Echo: Hello SDK", r)
check("completion finish", r.choices[0].finish_reason == "stop", r)
check("completion usage", r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage)
check("completion id is the execution", r.id.startswith("exec_"), r.id)

r = client.chat.completions.create(model="builtin/echo", messages=messages, max_tokens=2)
check("max_tokens", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2, r)

stream = client.chat.completions.create(
    model="builtin/echo", messages=messages, stream=True, stream_options={"include_usage": True}
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check("stream text", text == "Echo: Hello SDK", text)
check("stream finish", finish == "stop", finish)
check("stream usage", usage is not None and usage.completion_tokens > 0, usage)

tools = [{"type": "function", "function": {"name": "lookup", "description": "Looks things up",
          "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}}]
ask = [{"role": "user", "content": "find cats"}]
r = client.chat.completions.create(model="builtin/echo", messages=ask, tools=tools, tool_choice="required")
call = r.choices[0].message.tool_calls[0] if r.choices[0].message.tool_calls else None
check("tool call", call is not None and call.function.name == "lookup", r)
check("tool call arguments", call is not None and json.loads(call.function.arguments) == {"input": "find cats"}, r)
check("tool call finish", r.choices[0].finish_reason == "tool_calls", r)
follow = ask + [r.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "three cats"}]
r = client.chat.completions.create(model="builtin/echo", messages=follow, tools=tools)
check("tool result read", r.choices[0].message.content == "Echo: three cats", r)

stream = client.chat.completions.create(model="builtin/echo", messages=ask, tools=tools, tool_choice="required", stream=True)
name, arguments, finish = None, "", None
for chunk in stream:
    for c in chunk.choices[0].delta.tool_calls or []:
        name = c.function.name or name
        arguments += c.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
check("stream tool call", name == "lookup" and json.loads(arguments) == {"input": "find cats"}, (name, arguments))
check("stream tool finish", finish == "tool_calls", finish)

r = client.chat.completions.create(model="builtin/echo", messages=messages, response_format={"type": "json_object"})
check("json mode", json.loads(r.choices[0].message.content) == {"echo": "Hello SDK"}, r)

image = [{"role": "user", "content": [{"type": "text", "text": "look"},
          {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
r = client.chat.completions.create(model="builtin/echo", messages=image)
check("image input", r.choices[0].message.content == "Echo: look", r)

r = client.chat.completions.create(model="builtin/echo", messages=messages, extra_body={"routing": {"policy": "fastest"}})
check("routing preferences in extra_body", r.choices[0].message.content == "Echo: Hello SDK", r)

# Files: the SDK's multipart upload, retrieve, list, content, delete.
png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
f = client.files.create(file=("cat.png", png, "image/png"), purpose="vision")
check("files.create", f.id.startswith("file_") and f.bytes == len(png) and f.filename == "cat.png", f)
check("files.retrieve", client.files.retrieve(f.id).bytes == len(png))
check("files.list", f.id in [x.id for x in client.files.list().data])
check("files.content", client.files.content(f.id).read() == png)
image = [{"role": "user", "content": [{"type": "text", "text": "this file"},
          {"type": "image_url", "image_url": {"url": f.id}}]}]
r = client.chat.completions.create(model="builtin/echo", messages=image)
check("an uploaded file as image input", r.choices[0].message.content == "Echo: this file", r)
d = client.files.delete(f.id)
check("files.delete", d.deleted and d.id == f.id, d)
try:
    client.files.retrieve(f.id)
    check("a deleted file raises", False)
except openai.NotFoundError as e:
    check("a deleted file is NotFoundError", e.status_code == 404, e)
try:
    client.files.create(file=("x.png", b"%PDF-1.7 not an image", "image/png"), purpose="vision")
    check("a mistyped file raises", False)
except openai.APIStatusError as e:
    check("a mistyped file is a 415", e.status_code == 415, e)

try:
    client.chat.completions.create(model="no/such-model", messages=messages)
    check("unknown model raises", False)
except openai.NotFoundError as e:
    check("unknown model is NotFoundError", e.status_code == 404 and e.code == "model_not_found", e)

try:
    client.chat.completions.create(model="builtin/echo", messages=[{"role": "wizard", "content": "x"}])
    check("bad role raises", False)
except openai.BadRequestError as e:
    check("bad role is BadRequestError naming the field", "messages[0].role" in str(e), e)

bad = OpenAI(base_url=os.environ["MR_BASE_URL"], api_key="mr_not_a_key", max_retries=0)
try:
    bad.chat.completions.create(model="builtin/echo", messages=messages)
    check("bad key raises", False)
except openai.AuthenticationError as e:
    check("bad key is AuthenticationError", e.status_code == 401, e)

report(f"openai sdk {openai.__version__}")
