"""The official `openai` Python SDK against `stopwise serve`: streaming with a stop, not
streaming, and an error. Prints one JSON object for the Rust test to check.

Usage: python3 openai_sdk.py BASE_URL QUESTION
"""
import json
import sys

import openai

base, question = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": question}]
budget = {"policy": {"type": "budget", "max_tokens": 40}}

chunks = list(client.chat.completions.create(
    model="default", messages=messages, temperature=0, max_tokens=160, stream=True, extra_body={"stopwise": budget}))
streamed = {
    "content": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "finish_reason": chunks[-1].choices[0].finish_reason,
    "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None,
    "stopwise": chunks[-1].model_dump().get("stopwise"),
}

whole = client.chat.completions.create(
    model="default", messages=messages, temperature=0, max_tokens=16, extra_body={"stopwise": {"disable": True}})

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    error = None
except openai.NotFoundError as e:
    error = {"status": e.status_code, "code": e.code}

print(json.dumps({
    "streamed": streamed,
    "whole": {"content": whole.choices[0].message.content, "usage": whole.usage.model_dump()},
    "error": error,
}))
