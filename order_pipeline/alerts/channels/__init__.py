"""Alert delivery channels: WeCom, DingTalk and Feishu group robots, Slack, a signed JSON
webhook, e-mail, and the local outbox table.

A channel turns an `AlertMessage` into its platform's payload and raises `ChannelError` when
the platform refuses it. `deliver` retries what is worth retrying and returns every attempt,
so the ledger can record each one. Robots take about 20 messages a minute; a burst beyond
that is folded into digests (`plan`, `digest`, `RateBudget`) instead of being dropped.

Error answers and what happens to them:

| channel  | answer                                           | meaning                            | retry          |
|----------|--------------------------------------------------|------------------------------------|----------------|
| all HTTP | timeout, connection error, HTTP 408, 429, 5xx    | network or server trouble          | yes (backoff)  |
| WeCom    | errcode 45009                                    | over 20 messages a minute          | yes            |
| WeCom    | errcode 93000                                    | the webhook key is wrong           | no: fix it     |
| WeCom    | any other errcode (40058 too long, ...)          | the message is refused             | no             |
| DingTalk | errcode 130101 "send too fast"                   | the robot is muted for 10 minutes  | next round     |
| DingTalk | errcode -1                                       | system busy                        | yes            |
| DingTalk | errcode 310000                                   | sign, keyword or IP check failed   | no: fix it     |
| Feishu   | code 11232                                       | over 100 a minute / 5 a second     | yes            |
| Feishu   | code 19021 (sign), 19022 (IP), 19024 (keyword)   | a security setting refused it      | no: fix it     |
| Feishu   | code 9499                                        | malformed request                  | no             |
| Slack    | 400 invalid_payload, 403, 404 no_service, 410    | refused or webhook gone            | no             |
| e-mail   | SMTP 4xx, connection errors                      | transient                          | yes            |
| e-mail   | SMTP 5xx                                         | refused                            | no             |

One module per family (`wecom`, `dingtalk`, `feishu`, `slack`, `webhook`, `email`, `outbox`) on
what they share (`message`); sending with retries, budgets and digests is `delivery`, and
building a channel from its `channels:` entry is `config`.
"""
