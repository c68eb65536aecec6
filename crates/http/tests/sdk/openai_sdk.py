"""The official OpenAI Python SDK against a running ModelRoute server,
unmodified: only base_url and api_key change. Run by .ci/run:

    MR_BASE_URL=http://127.0.0.1:PORT/v1 MR_KEY=mr_... python openai_sdk.py
"""

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
