#!/usr/bin/env python3
"""Drives Sluice's OpenAI-compatible front door with the official `openai` package (PyPI), the
way existing SDK clients would, and prints what came back as one JSON object.

  pip install openai
  python3 scripts/openai-sdk-check.py --base-url http://127.0.0.1:8080/v1 --api-key TOKEN --model default

Loopback only; every call has a timeout.
"""
import argparse
import json
import sys

import openai


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    arguments = parser.parse_args()
    client = openai.OpenAI(base_url=arguments.base_url, api_key=arguments.api_key, timeout=20, max_retries=0)
    result = {"sdk_version": openai.__version__}

    result["models"] = sorted(model.id for model in client.models.list())

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "stream please"}]
    stream = client.chat.completions.create(
        model=arguments.model, messages=messages, stream=True, stream_options={"include_usage": True}, max_tokens=50)
    pieces, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    result["stream"] = {"text": "".join(pieces), "chunks": len(pieces), "finish_reason": finish, "usage": usage, "ids": len(ids)}

    answer = client.chat.completions.create(
        model=arguments.model, messages=[{"role": "user", "content": "no stream"}], max_tokens=50)
    result["plain"] = {
        "text": answer.choices[0].message.content, "role": answer.choices[0].message.role,
        "finish_reason": answer.choices[0].finish_reason, "usage": answer.usage.model_dump(), "object": answer.object,
    }

    try:
        openai.OpenAI(base_url=arguments.base_url, api_key="not-a-token", timeout=10, max_retries=0).chat.completions.create(
            model=arguments.model, messages=[{"role": "user", "content": "x"}])
        result["bad_key"] = "accepted"
    except openai.AuthenticationError as error:
        result["bad_key"] = {"status": error.status_code, "code": (error.body or {}).get("code")}

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        result["unknown_model"] = "accepted"
    except openai.NotFoundError as error:
        result["unknown_model"] = {"status": error.status_code, "code": (error.body or {}).get("code")}

    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
