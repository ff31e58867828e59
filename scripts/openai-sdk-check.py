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
    parser.add_argument("--tools", action="store_true",
                        help="also pass a client-defined tool through both ways (the upstream must call get_weather)")
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

    if arguments.tools:
        result.update(check_client_tools(client, arguments.model))

    json.dump(result, sys.stdout)
    print()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def check_client_tools(client, model):
    """A client-defined tool both ways: the model's call comes back (streamed as `tool_calls`
    deltas, and whole), the client runs it and sends the result in its next request."""
    result = {}
    question = [{"role": "user", "content": "weather in Paris?"}]
    stream = client.chat.completions.create(
        model=model, messages=question, tools=[WEATHER], tool_choice="auto", stream=True, max_tokens=50)
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                finish = choice.finish_reason
    result["tools_stream"] = {"calls": [calls[index] for index in sorted(calls)], "finish_reason": finish}

    answer = client.chat.completions.create(model=model, messages=question, tools=[WEATHER], max_tokens=50)
    message = answer.choices[0].message
    result["tools_plain"] = {
        "calls": [{"id": call.id, "name": call.function.name, "arguments": call.function.arguments} for call in message.tool_calls or []],
        "content": message.content, "finish_reason": answer.choices[0].finish_reason,
    }

    call = (message.tool_calls or [None])[0]
    if call is not None:
        followed = question + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ]
        final = client.chat.completions.create(model=model, messages=followed, tools=[WEATHER], max_tokens=50)
        result["tools_answer"] = {"text": final.choices[0].message.content, "finish_reason": final.choices[0].finish_reason}
    return result


if __name__ == "__main__":
    main()
