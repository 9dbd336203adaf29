"""Document parsing: every fixture file is generated here, in each test's tmp_path.

The PDFs use ReportLab's built-in STSong-Light CID font, so CJK text is tested in PDFs
without any font file on the machine.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import zipfile
from pathlib import Path

import docx
import openpyxl
import pytest
from docx.enum.style import WD_STYLE_TYPE
from msoffcrypto.format.ooxml import OOXMLFile
from pypdf import PdfReader, PdfWriter
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from apps.knowledge.parsing import (
    SUPPORTED_EXTENSIONS,
    DocumentParseError,
    ParsedDocument,
    Section,
    parse_document,
)

CJK_FONT = "STSong-Light"
pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))


def write_pdf(
    path: Path,
    pages: list[list[str]],
    *,
    outline: dict[int, list[tuple[str, int]]] | None = None,
    title: str | None = None,
) -> Path:
    """Write one PDF page per list of lines; ``outline`` maps a page index to its bookmarks."""
    pdf = canvas.Canvas(str(path))
    if title:
        pdf.setTitle(title)
    for index, lines in enumerate(pages):
        for number, (heading, level) in enumerate((outline or {}).get(index, [])):
            key = f"p{index}-{number}"
            pdf.bookmarkPage(key)
            pdf.addOutlineEntry(heading, key, level=level)
        pdf.setFont(CJK_FONT, 12)
        for row, line in enumerate(lines):
            pdf.drawString(72, 760 - row * 18, line)
        pdf.showPage()
    pdf.save()
    return path


def section_map(document: ParsedDocument) -> dict[tuple[str, ...], str]:
    return {section.heading_path: section.text for section in document.sections}


def parse_error(path: Path, **kwargs: object) -> DocumentParseError:
    with pytest.raises(DocumentParseError) as caught:
        parse_document(path, **kwargs)  # type: ignore[arg-type]
    return caught.value


# --- PDF -------------------------------------------------------------------------------


def test_pdf_sections_follow_pages_and_outline(tmp_path: Path) -> None:
    # Given a two-page CJK PDF whose outline has a chapter and a nested section
    path = write_pdf(
        tmp_path / "handbook.pdf",
        [
            ["第一章 总则", "员工入职满一年可享受五天年假。"],
            ["1.1 年假申请", "年假需提前三天在企业微信中申请！"],
        ],
        outline={0: [("第一章 总则", 0)], 1: [("1.1 年假申请", 1)]},
        title="员工手册",
    )

    # When it is parsed
    document = parse_document(path)

    # Then each page is a section under its bookmark path, numbered from 1
    assert document.title == "员工手册"
    assert document.pages == 2
    assert [(s.heading_path, s.page) for s in document.sections] == [
        (("第一章 总则",), 1),
        (("第一章 总则", "1.1 年假申请"), 2),
    ]
    assert "员工入职满一年可享受五天年假。" in document.sections[0].text
    assert "企业微信" in document.sections[1].text


def test_pdf_splits_a_page_where_a_bookmark_title_appears(tmp_path: Path) -> None:
    # Given a page whose second heading starts halfway down
    path = write_pdf(
        tmp_path / "rules.pdf",
        [["Chapter 1", "Intro text.", "Chapter 2", "Second chapter text."]],
        outline={0: [("Chapter 1", 0), ("Chapter 2", 0)]},
    )

    # When it is parsed
    sections = section_map(parse_document(path))

    # Then the text above "Chapter 2" stays with chapter 1
    assert "Intro text." in sections[("Chapter 1",)]
    assert "Second chapter" not in sections[("Chapter 1",)]
    assert "Second chapter text." in sections[("Chapter 2",)]


def test_pdf_without_outline_has_one_section_per_page(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "notes.pdf", [["Page one."], ["Page two."], ["Page three."]])

    document = parse_document(path)

    assert document.title == "notes"  # ReportLab's "untitled" placeholder is ignored
    assert [(s.heading_path, s.page, s.text) for s in document.sections] == [
        ((), 1, "Page one."),
        ((), 2, "Page two."),
        ((), 3, "Page three."),
    ]


def test_pdf_lines_wrapped_for_layout_are_joined(tmp_path: Path) -> None:
    # Given a paragraph that the PDF wrapped mid-sentence, followed by a short paragraph
    path = write_pdf(
        tmp_path / "wrapped.pdf",
        [["员工入职满一年可享受五天年假，年假需要在企业微信", "中提前三天申请。", "第二段。"]],
    )

    # Then the wrapped sentence is whole again and the paragraph end is kept
    assert parse_document(path).sections[0].text == (
        "员工入职满一年可享受五天年假，年假需要在企业微信中提前三天申请。\n第二段。"
    )


def test_password_protected_pdf_is_encrypted(tmp_path: Path) -> None:
    # Given a PDF that needs a password to open
    plain = write_pdf(tmp_path / "plain.pdf", [["Secret salary table."]])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt("open-sesame", algorithm="AES-256")
    path = tmp_path / "secret.pdf"
    with path.open("wb") as stream:
        writer.write(stream)

    # Then it is refused as encrypted
    assert parse_error(path).code == "encrypted"


def test_pdf_with_only_an_owner_password_is_read(tmp_path: Path) -> None:
    # Given a PDF restricted by an owner password but openable without one
    plain = write_pdf(tmp_path / "plain.pdf", [["Printing is restricted."]])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt("", owner_password="owner", algorithm="AES-128")
    path = tmp_path / "restricted.pdf"
    with path.open("wb") as stream:
        writer.write(stream)

    # Then its text is read
    assert parse_document(path).sections[0].text == "Printing is restricted."


def test_scanned_pdf_without_text_is_empty(tmp_path: Path) -> None:
    # Given a PDF whose page holds only graphics, as a scan would
    path = tmp_path / "scan.pdf"
    pdf = canvas.Canvas(str(path))
    pdf.rect(72, 72, 400, 600, fill=1)
    pdf.showPage()
    pdf.save()

    error = parse_error(path)

    assert error.code == "empty"
    assert "OCR" in error.message


def test_truncated_pdf_is_corrupt(tmp_path: Path) -> None:
    whole = write_pdf(tmp_path / "whole.pdf", [["Some text."], ["More text."]]).read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(whole[: len(whole) // 2])

    assert parse_error(path).code == "corrupt"


# --- Word and Excel --------------------------------------------------------------------


def write_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_paragraph("员工手册", style="Title")
    document.add_paragraph("前言：本手册适用于全体员工。")
    document.add_heading("假期", level=1)
    document.add_heading("年假", level=2)
    document.add_paragraph("员工入职满一年可享受五天年假。")
    table = document.add_table(rows=3, cols=2)
    values_by_row = [("工龄", "天数"), ("1-10年", "5"), ("10年以上", "10")]
    for row, values in zip(table.rows, values_by_row, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("病假", level=2)
    document.add_paragraph("病假需提供医院证明。")
    document.add_heading("报销", level=1)
    document.add_paragraph("差旅费用在出差结束后十日内报销。")
    document.save(str(path))
    return path


def test_docx_sections_follow_heading_styles(tmp_path: Path) -> None:
    # Given a Word file with a Title, nested headings and a table
    path = write_docx(tmp_path / "handbook.docx")

    # When it is parsed
    document = parse_document(path)

    # Then the Title names the document and headings form the paths
    assert document.title == "员工手册"
    assert [s.heading_path for s in document.sections] == [
        (),
        ("假期", "年假"),
        ("假期", "病假"),
        ("报销",),
    ]
    sections = section_map(document)
    assert sections[()] == "前言：本手册适用于全体员工。"
    assert sections[("假期", "年假")] == (
        "员工入职满一年可享受五天年假。\n\n工龄: 1-10年\n天数: 5\n\n工龄: 10年以上\n天数: 10"
    )
    assert sections[("报销",)] == "差旅费用在出差结束后十日内报销。"


def test_docx_localised_heading_style_names_are_headings(tmp_path: Path) -> None:
    # Given a document styled by a Chinese template ("标题 1" instead of "Heading 1")
    document = docx.Document()
    document.styles.add_style("标题 1", WD_STYLE_TYPE.PARAGRAPH)
    document.add_paragraph("考勤", style="标题 1")
    document.add_paragraph("每天九点打卡。")
    path = tmp_path / "wps.docx"
    document.save(str(path))

    assert section_map(parse_document(path)) == {("考勤",): "每天九点打卡。"}


def test_password_protected_docx_is_encrypted(tmp_path: Path) -> None:
    plain = write_docx(tmp_path / "plain.docx")
    path = tmp_path / "locked.docx"
    with plain.open("rb") as source, path.open("wb") as target:
        OOXMLFile(source).encrypt("open-sesame", target)

    assert parse_error(path).code == "encrypted"


def test_random_bytes_named_docx_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "broken.docx"
    path.write_bytes(os.urandom(4096))

    assert parse_error(path).code == "corrupt"


def test_docx_with_damaged_xml_is_corrupt_not_a_library_error(tmp_path: Path) -> None:
    # Given a real .docx whose main part is no longer valid XML
    good = write_docx(tmp_path / "good.docx")
    path = tmp_path / "damaged.docx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "word/document.xml":
                data = data[: len(data) // 2]
            target.writestr(item, data)

    # Then the XML error is wrapped
    error = parse_error(path)
    assert error.code == "corrupt"
    assert isinstance(error.__cause__, Exception)


def test_xlsx_has_one_section_per_sheet_with_header_value_rows(tmp_path: Path) -> None:
    # Given a workbook with two sheets, numbers, a date and a blank cell
    workbook = openpyxl.Workbook()
    staff = workbook.active
    staff.title = "员工"
    staff.append(["姓名", "部门", "年假天数", "入职日期"])
    staff.append(["张三", "研发部", 5, dt.datetime(2023, 3, 1)])
    staff.append(["李四", None, 10.0, dt.datetime(2015, 7, 15)])
    holidays = workbook.create_sheet("节假日")
    holidays.append(["节日", "天数"])
    holidays.append(["春节", 7])
    path = tmp_path / "staff.xlsx"
    workbook.save(path)

    # When it is parsed
    document = parse_document(path)

    # Then each sheet is a section of "header: value" records
    assert document.pages == 2
    assert section_map(document) == {
        ("员工",): "姓名: 张三\n部门: 研发部\n年假天数: 5\n入职日期: 2023-03-01\n\n"
        "姓名: 李四\n年假天数: 10\n入职日期: 2015-07-15",
        ("节假日",): "节日: 春节\n天数: 7",
    }


# --- Text formats ----------------------------------------------------------------------


def test_gbk_csv_rows_become_header_value_lines(tmp_path: Path) -> None:
    path = tmp_path / "leave.csv"
    path.write_bytes("姓名,部门,年假天数\n张三,研发部,5\n李四,市场部,10\n".encode("gbk"))

    document = parse_document(path)

    assert document.title == "leave"
    assert document.sections == [
        Section(
            (),
            "姓名: 张三\n部门: 研发部\n年假天数: 5\n\n姓名: 李四\n部门: 市场部\n年假天数: 10",
        )
    ]


def test_gb18030_text_decodes_including_characters_outside_gbk(tmp_path: Path) -> None:
    # Given GB18030 text with a CJK Extension B character that GBK cannot encode
    text = "员工手册\n\n第一条 员工入职满一年可享受五天年假。\n第二条 姓名用字“𠀀”照常登记。"
    path = tmp_path / "手册.txt"
    path.write_bytes(text.encode("gb18030"))

    document = parse_document(path)

    assert document.title == "手册"
    assert document.sections == [Section((), text)]


def test_utf16_text_with_bom_decodes(tmp_path: Path) -> None:
    path = tmp_path / "memo.txt"
    path.write_bytes("通知：周五下午开会。".encode("utf-16"))

    assert parse_document(path).sections[0].text == "通知：周五下午开会。"


def test_western_legacy_text_decodes(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes("Café au lait, naïve résumé. Ça va très bien à Paris.".encode("cp1252"))

    assert parse_document(path).sections[0].text == (
        "Café au lait, naïve résumé. Ça va très bien à Paris."
    )


MARKDOWN = """\
---
author: hr
---
# 员工手册

欢迎加入公司。

## 假期

### 年假

员工入职满一年可享受**五天**[年假](https://example.com)。

- 需提前申请
- 可分次使用

```
# 这不是标题
```

### 病假

| 类型 | 证明 |
| --- | --- |
| 病假 | 医院证明 |

## 报销

差旅费用十日内报销。
"""


def test_markdown_sections_follow_nested_headings(tmp_path: Path) -> None:
    path = tmp_path / "handbook.md"
    path.write_text(MARKDOWN, encoding="utf-8")

    document = parse_document(path)

    assert document.title == "员工手册"
    assert section_map(document) == {
        ("员工手册",): "欢迎加入公司。",
        ("员工手册", "假期", "年假"): "员工入职满一年可享受五天年假。\n\n"
        "- 需提前申请\n\n- 可分次使用\n\n# 这不是标题",
        ("员工手册", "假期", "病假"): "类型: 病假\n证明: 医院证明",
        ("员工手册", "报销"): "差旅费用十日内报销。",
    }


HTML = """\
<!DOCTYPE html>
<html><head><meta charset="gbk"><title>报销制度 - 内网</title>
<style>body { color: red }</style><script>var tracking = "ignore me";</script></head>
<body>
<header class="site-header"><a href="/">公司内网首页</a></header>
<nav><ul><li><a href="/hr">人力资源</a></li><li><a href="/it">IT 服务</a></li></ul></nav>
<div id="cookie-banner">本站使用 Cookie 以改善体验。<button>同意</button></div>
<main>
  <h1>报销制度</h1>
  <p>差旅费用在出差结束后<b>十日内</b>报销。</p>
  <h2>交通</h2>
  <p>高铁二等座可全额报销。</p>
  <ul><li>飞机需审批</li><li>出租车需发票</li></ul>
  <h2>住宿</h2>
  <table><tr><th>城市</th><th>标准</th></tr><tr><td>北京</td><td>500元</td></tr></table>
  <div style="display:none">隐藏的内容</div>
</main>
<aside>相关文章：考勤制度</aside>
<footer>2024 公司 版权所有</footer>
</body></html>
"""


def test_html_keeps_main_content_and_drops_page_chrome(tmp_path: Path) -> None:
    # Given a GBK page with header, nav, cookie banner, aside, footer and scripts
    path = tmp_path / "expenses.html"
    path.write_bytes(HTML.encode("gbk"))

    # When it is parsed
    document = parse_document(path)

    # Then only the main content remains, under its headings
    assert document.title == "报销制度 - 内网"
    assert section_map(document) == {
        ("报销制度",): "差旅费用在出差结束后十日内报销。",
        ("报销制度", "交通"): "高铁二等座可全额报销。\n\n- 飞机需审批\n\n- 出租车需发票",
        ("报销制度", "住宿"): "城市: 北京\n标准: 500元",
    }
    everything = " ".join(section.text for section in document.sections)
    for chrome in ("内网首页", "人力资源", "Cookie", "相关文章", "版权所有", "tracking", "隐藏"):
        assert chrome not in everything


def test_html_without_main_element_drops_chrome_from_body(tmp_path: Path) -> None:
    path = tmp_path / "page.htm"
    path.write_text(
        "<html><body><div id='navbar'>Home | About</div><h1>Policy</h1><p>Be kind.</p>"
        "<div class='footer'>Contact us</div></body></html>",
        encoding="utf-8",
    )

    assert section_map(parse_document(path)) == {("Policy",): "Be kind."}


# --- Dispatch and refusals -------------------------------------------------------------


def test_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "nothing.txt"
    path.write_bytes(b"")

    assert parse_error(path).code == "empty"


def test_whitespace_only_markdown_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "blank.md"
    path.write_text("\n\n   \n", encoding="utf-8")

    assert parse_error(path).code == "empty"


def test_file_over_the_limit_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 2048)

    error = parse_error(path, max_bytes=1024)

    assert error.code == "too_large"
    assert "limit" in error.message


def test_unknown_extension_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "slides.key"
    path.write_bytes(b"\x00\x01binary")

    error = parse_error(path)

    assert error.code == "unsupported"
    assert "Supported types" in error.message


def test_uploaded_filename_decides_format_and_title_for_a_temp_file(tmp_path: Path) -> None:
    # Given an upload stored under a temporary name without extension
    path = tmp_path / "upload-1234"
    path.write_text("# 考勤\n\n每天九点打卡。", encoding="utf-8")

    document = parse_document(path, filename="考勤制度.md")

    assert section_map(document) == {("考勤",): "每天九点打卡。"}


def test_content_sniffing_reads_a_misnamed_pdf(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    path.write_bytes(write_pdf(tmp_path / "real.pdf", [["Quarterly report."]]).read_bytes())

    assert parse_document(path).sections[0].text == "Quarterly report."


def test_supported_extensions_are_exposed_for_upload_validation() -> None:
    assert {"txt", "md", "html", "htm", "pdf", "docx", "xlsx", "csv"} <= SUPPORTED_EXTENSIONS


def test_errors_carry_code_and_message_and_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(DocumentParseError("corrupt", "The file is damaged.")))

    assert (error.code, error.message, str(error)) == (
        "corrupt",
        "The file is damaged.",
        "The file is damaged.",
    )
