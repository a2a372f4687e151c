"""Which pending item a reviewer gets next: the order's sort score and the balanced claim.

Every set of the review index is scored by the order: ``uncertainty`` by the record's margin
(top-1 minus top-2 score, smallest first), ``oldest`` by when it was labeled, ``random`` by a hash
of key and ETag (so a rebuild gives the same scores). Under ``uncertainty`` a claim without a
prefix goes round-robin over the predicted classes, each giving its most uncertain free item, so
no class starves; audit items and label issues (a set, a lane, each of their own) are served at
their share of the pending items. Each step is a ``ZRANGE`` from rank 0: O(log n) at any queue
length.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from storage import LabelRecord

ReviewOrder = Literal["uncertainty", "oldest", "random"]
REVIEW_ORDERS: tuple[ReviewOrder, ...] = ("uncertainty", "oldest", "random")

# Margins and hashed scores lie in [0, 1]; a skipped item gets 1 + now/1e10 so it sorts after all
# of them, and after the items skipped before it (1e-10 s resolution is far below a double's).
_BACK_OFFSET = 1.0
_BACK_SCALE = 1e-10

# ARGV: namespace, token, lease ms, class ('' = all), most members to look at per lane.
# Returns [key, item] when it leased one, or false. Lane credit is error diffusion: each claim adds
# a lane's share of pending (audits, then label issues), and one of its items is served whenever a
# whole one has built up.
BALANCED_CLAIM = """
local ns, token, lease_ms, only = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local budget = tonumber(ARGV[5])
local function take(set)
  local start = 0
  while start < budget do
    local members = redis.call('ZRANGE', set, start, start + 49)
    if #members == 0 then return nil end
    for _, key in ipairs(members) do
      if redis.call('SET', ns .. ':lease:' .. key, token, 'NX', 'PX', lease_ms) then
        return {key, redis.call('HGET', ns .. ':items', key)}
      end
    end
    start = start + #members
  end
  return nil
end
local classes = {only}
if only == '' then
  classes = redis.call('SMEMBERS', ns .. ':classes')
  table.sort(classes)
  for _, lane in ipairs({'audit', 'issue'}) do
    local waiting = redis.call('ZCARD', ns .. ':' .. lane)
    if waiting > 0 then
      local share = waiting / math.max(redis.call('ZCARD', ns .. ':pending'), waiting)
      local credit_key = ns .. ':' .. lane .. '-credit'
      local credit = tonumber(redis.call('GET', credit_key) or '0') + share
      if credit >= 1 then
        local found = take(ns .. ':' .. lane)
        if found then
          redis.call('SET', credit_key, tostring(credit - 1))
          return found
        end
      end
      redis.call('SET', credit_key, tostring(math.min(credit, 1)))
    end
  end
end
local n = #classes
if n == 0 then return false end
local turn = redis.call('INCR', ns .. ':turn')
for i = 0, n - 1 do
  local found = take(ns .. ':class:' .. classes[((turn - 1 + i) % n) + 1])
  if found then return found end
end
return false
"""


def margin(record: LabelRecord) -> float:
    """Top-1 minus top-2 score (the top-1 score when there is no second guess); 1.0 if unscored."""
    scores = sorted((p.score for p in record.top_k), reverse=True)
    if not scores:
        return 1.0 if record.score is None else float(record.score)
    return scores[0] - (scores[1] if len(scores) > 1 else 0.0)


def order_score(order: ReviewOrder, record: LabelRecord) -> float:
    """The record's score in the index's sorted sets: lowest is served first."""
    if order == "uncertainty":
        return min(max(margin(record), 0.0), 1.0)
    if order == "random":
        seed = f"{record.source_key}\0{record.source_etag}".encode()
        return int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest()) / 2.0**64
    return record.created_at


def issue_score(order: ReviewOrder, member: str, quality: float, now: float) -> float:
    """A label issue's score: its label quality under ``uncertainty`` (the likeliest error
    first), else as a record queued ``now`` would be scored."""
    if order == "uncertainty":
        return min(max(quality, 0.0), 1.0)
    if order == "random":
        return int.from_bytes(hashlib.blake2b(member.encode(), digest_size=8).digest()) / 2.0**64
    return now


def back_score(order: ReviewOrder, now: float) -> float:
    """The score that puts a skipped item behind every item queued before ``now``."""
    return now if order == "oldest" else _BACK_OFFSET + now * _BACK_SCALE
