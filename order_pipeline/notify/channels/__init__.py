"""The channels that reach a customer: SMS through Aliyun or Tencent Cloud, WeChat template messages, the outbox."""
