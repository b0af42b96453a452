"""/v1/tokens: issue, list and revoke API tokens (admin scope). The CLI does the same on the database."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from service.storage import tokens
from service.api.deps import get_session
from service.api.responses import token_out
from service.api.schemas import TokenCreated, TokenIn, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenIn, session: Session = Depends(get_session)) -> TokenCreated:
    issued = tokens.create_token(session, name=body.name, scopes=list(body.scopes))
    session.commit()
    return TokenCreated(**token_out(issued.record).model_dump(), secret=issued.secret)


@router.get("", response_model=list[TokenOut])
def list_tokens(session: Session = Depends(get_session)) -> list[TokenOut]:
    return [token_out(r) for r in tokens.list_tokens(session)]


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(token_id: str, session: Session = Depends(get_session)) -> TokenOut:
    rec = tokens.revoke_token(session, token_id=token_id)
    session.commit()
    return token_out(rec)
