"""The official Anthropic Python SDK against a running ModelRoute server,
unmodified: only base_url and api_key change. Run by .ci/run:

    MR_ROOT_URL=http://127.0.0.1:PORT MR_KEY=mr_... python anthropic_sdk.py
"""

import os

import anthropic
from anthropic import Anthropic
from checks import check, report

client = Anthropic(base_url=os.environ["MR_ROOT_URL"], api_key=os.environ["MR_KEY"], max_retries=0)


messages = [{"role": "user", "content": "Hello SDK"}]

m = client.messages.create(model="builtin/echo", max_tokens=64, system="be brief", messages=messages)
check("message text", m.content[0].text == "Echo: Hello SDK", m)
check("stop reason", m.stop_reason == "end_turn", m.stop_reason)
check("usage", m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage)

m = client.messages.create(model="builtin/echo", max_tokens=2, messages=messages)
check("max_tokens", m.stop_reason == "max_tokens" and m.usage.output_tokens == 2, m)

with client.messages.stream(model="builtin/echo", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
check("stream text", text == "Echo: Hello SDK", text)
check("stream final message", final.content[0].text == text and final.stop_reason == "end_turn", final)
check("stream usage", final.usage.output_tokens > 0, final.usage)

tools = [{"name": "lookup", "description": "Looks things up",
          "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}}}]
ask = [{"role": "user", "content": "find cats"}]
m = client.messages.create(model="builtin/echo", max_tokens=64, messages=ask, tools=tools, tool_choice={"type": "any"})
use = next((b for b in m.content if b.type == "tool_use"), None)
check("tool use", use is not None and use.name == "lookup" and use.input == {"input": "find cats"}, m)
check("tool use stop reason", m.stop_reason == "tool_use", m.stop_reason)
follow = ask + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "three cats"}]}]
m = client.messages.create(model="builtin/echo", max_tokens=64, messages=follow, tools=tools)
check("tool result read", m.content[0].text == "Echo: three cats", m)

with client.messages.stream(model="builtin/echo", max_tokens=64, messages=ask, tools=tools,
                            tool_choice={"type": "tool", "name": "lookup"}) as stream:
    final = stream.get_final_message()
use = next((b for b in final.content if b.type == "tool_use"), None)
check("stream tool use", use is not None and use.input == {"input": "find cats"}, final)
check("stream tool stop reason", final.stop_reason == "tool_use", final.stop_reason)

image = [{"role": "user", "content": [{"type": "text", "text": "look"},
          {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}]
m = client.messages.create(model="builtin/echo", max_tokens=64, messages=image)
check("image input", m.content[0].text == "Echo: look", m)

try:
    client.messages.create(model="no/such-model", max_tokens=8, messages=messages)
    check("unknown model raises", False)
except anthropic.NotFoundError as e:
    check("unknown model is NotFoundError", e.status_code == 404, e)

bad = Anthropic(base_url=os.environ["MR_ROOT_URL"], api_key="mr_not_a_key", max_retries=0)
try:
    bad.messages.create(model="builtin/echo", max_tokens=8, messages=messages)
    check("bad key raises", False)
except anthropic.AuthenticationError as e:
    check("bad key is AuthenticationError", e.status_code == 401, e)

report(f"anthropic sdk {anthropic.__version__}")
